// Runs the sketch on the host: ./sketch MODE A,O[,FAULT] ... (MODE passive|request).
#include <cstdlib>
#include <cstring>
#include <string>

#include "Wire.h"

void setup();
void loop();

HardwareSerial Serial;
TwoWire Wire;
FakeMlx mlx;
static unsigned long fake_ms = 0;
unsigned long millis() { return fake_ms; }

static uint8_t crc8(uint8_t crc, uint8_t data) {
  crc ^= data;
  for (int i = 0; i < 8; i++) crc = (crc & 0x80) ? (uint8_t)((crc << 1) ^ 0x07) : (uint8_t)(crc << 1);
  return crc;
}

uint8_t TwoWire::endTransmission(bool) {
  if (address != 0x5A || (mlx.fault == MlxFault::nack && reg == 0x07)) return 2;  // NACK
  return written == 1 ? 0 : 4;
}

uint8_t TwoWire::requestFrom(uint8_t addr, uint8_t n) {
  float c = reg == 0x06 ? mlx.ambient_c : mlx.object_c;
  uint16_t raw = (uint16_t)std::lround((c + 273.15) / 0.02);
  if (reg == 0x07 && mlx.fault == MlxFault::error_flag) raw |= 0x8000;
  reply[0] = raw & 0xFF;
  reply[1] = raw >> 8;
  uint8_t pec = 0;
  pec = crc8(pec, (uint8_t)(addr << 1));
  pec = crc8(pec, reg);
  pec = crc8(pec, (uint8_t)((addr << 1) | 1));
  pec = crc8(pec, reply[0]);
  pec = crc8(pec, reply[1]);
  if (reg == 0x07 && mlx.fault == MlxFault::bad_pec) pec ^= 0x01;
  reply[2] = pec;
  len = n < 3 ? n : 3;
  pos = 0;
  return len;
}

int main(int argc, char **argv) {
  bool request = argc > 1 && std::strcmp(argv[1], "request") == 0;
  setup();
  for (int i = 2; i < argc; ++i) {
    std::string item = argv[i];
    size_t c1 = item.find(','), c2 = item.find(',', c1 + 1);
    mlx.ambient_c = std::strtof(item.substr(0, c1).c_str(), nullptr);
    mlx.object_c = std::strtof(item.substr(c1 + 1, c2 - c1 - 1).c_str(), nullptr);
    std::string fault = c2 == std::string::npos ? "" : item.substr(c2 + 1);
    mlx.fault = fault == "pec" ? MlxFault::bad_pec : fault == "flag" ? MlxFault::error_flag
              : fault == "nack" ? MlxFault::nack : MlxFault::none;
    if (request) {
      for (const char *p = "x\nT\n"; *p; ++p) Serial.input.push_back(*p);  // noise line, then the request
      loop();
    } else {
      fake_ms += 500;
      loop();
      loop();  // a second pass inside the same period prints nothing
    }
  }
  if (Wire.clock_hz != 100000) return 3;
  return 0;
}
