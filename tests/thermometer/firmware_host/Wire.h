// Host stand-in for Wire.h with a simulated MLX90614 on the bus (tests only).
#pragma once
#include "Arduino.h"

enum class MlxFault { none, bad_pec, error_flag, nack };

struct FakeMlx {
  float ambient_c = 25.0f;
  float object_c = 34.2f;
  MlxFault fault = MlxFault::none;  // applies to the object register
};

extern FakeMlx mlx;

class TwoWire {
 public:
  void begin() {}
  void setClock(unsigned long hz) { clock_hz = hz; }
  void beginTransmission(uint8_t addr) { address = addr; written = 0; }
  size_t write(uint8_t b) { reg = b; ++written; return 1; }
  uint8_t endTransmission(bool stop = true);
  uint8_t requestFrom(uint8_t addr, uint8_t n);
  int read() { return pos < len ? reply[pos++] : -1; }
  unsigned long clock_hz = 0;

 private:
  uint8_t address = 0, reg = 0, written = 0, reply[3] = {0, 0, 0}, len = 0, pos = 0;
};

extern TwoWire Wire;
