// checkpoint ASCII thermometer: an MLX90614 on I2C, one text line per reading.
//
// Speaks the "ascii" protocol of checkpoint's firmware_bridge (specs/hardware.md §1.5):
//
//     MLX90614 ready\r\n                                  once, at start-up
//     Ambient = 25.00*C\tObject = 34.20*C\r\n              every PERIOD_MS (passive mode)
//
// With CHECKPOINT_REQUEST_MODE 1 it prints a reading only after receiving the line "T"
// (gate.toml: [thermometer.ascii] request = "T\n").
//
// Wiring (Arduino Uno/Nano, 5 V boards with a 3.3 V MLX90614 breakout that has its own
// regulator and pull-ups): VIN -> 5V, GND -> GND, SDA -> A4, SCL -> A5. ESP32: SDA 21,
// SCL 22. The sensor's SMBus clock is at most 100 kHz.
//
// Each word is read with its PEC (the SMBus CRC-8) and the sensor's error flag is
// checked. A failed read prints "nan" for that value: the gate's parser refuses the
// whole line rather than guess (hardware.md §1.5 rule 3), so a loose wire shows as a
// stale thermometer, never as a wrong temperature.

#include <Wire.h>

#ifndef CHECKPOINT_REQUEST_MODE
#define CHECKPOINT_REQUEST_MODE 0
#endif

static const uint8_t MLX_ADDR = 0x5A;        // factory SMBus address
static const uint8_t REG_TA = 0x06;          // RAM: ambient (sensor die) temperature
static const uint8_t REG_TOBJ1 = 0x07;       // RAM: object temperature, zone 1
static const long BAUD = 9600;               // gate.toml [thermometer] baudrate
static const unsigned long PERIOD_MS = 500;  // about the [thermometer.ascii] poll_s default

#if CHECKPOINT_REQUEST_MODE
static char line[16];
static uint8_t lineLen = 0;
#else
static unsigned long lastReport = 0;
#endif

// SMBus PEC: CRC-8, polynomial x^8 + x^2 + x + 1 (0x07), initial value 0.
static uint8_t crc8(uint8_t crc, uint8_t data) {
  crc ^= data;
  for (uint8_t i = 0; i < 8; i++) {
    crc = (crc & 0x80) ? (uint8_t)((crc << 1) ^ 0x07) : (uint8_t)(crc << 1);
  }
  return crc;
}

// One RAM word -> degrees Celsius. False on a bus error, a bad PEC or the error flag.
static bool readCelsius(uint8_t reg, float *celsius) {
  Wire.beginTransmission(MLX_ADDR);
  Wire.write(reg);
  if (Wire.endTransmission(false) != 0) {  // repeated start, as the datasheet requires
    return false;
  }
  if (Wire.requestFrom(MLX_ADDR, (uint8_t)3) != 3) {
    return false;
  }
  uint8_t lo = Wire.read();
  uint8_t hi = Wire.read();
  uint8_t pec = Wire.read();
  uint8_t crc = 0;
  crc = crc8(crc, (uint8_t)(MLX_ADDR << 1));
  crc = crc8(crc, reg);
  crc = crc8(crc, (uint8_t)((MLX_ADDR << 1) | 1));
  crc = crc8(crc, lo);
  crc = crc8(crc, hi);
  if (crc != pec) {
    return false;
  }
  uint16_t raw = ((uint16_t)hi << 8) | lo;
  if (raw & 0x8000) {  // error flag: the sensor has no valid value
    return false;
  }
  *celsius = raw * 0.02f - 273.15f;  // 0.02 K per count
  return true;
}

static void printValue(bool ok, float celsius) {
  if (ok) {
    Serial.print(celsius, 2);
  } else {
    Serial.print(F("nan"));
  }
}

static void report() {
  float ambient = 0, object = 0;
  bool okAmbient = readCelsius(REG_TA, &ambient);
  bool okObject = readCelsius(REG_TOBJ1, &object);
  Serial.print(F("Ambient = "));
  printValue(okAmbient, ambient);
  Serial.print(F("*C\tObject = "));
  printValue(okObject, object);
  Serial.print(F("*C\r\n"));
}

void setup() {
  Serial.begin(BAUD);
  Wire.begin();
  Wire.setClock(100000);
  Serial.print(F("MLX90614 ready\r\n"));
}

void loop() {
#if CHECKPOINT_REQUEST_MODE
  while (Serial.available() > 0) {
    int c = Serial.read();
    if (c == '\r' || c == '\n') {
      line[lineLen] = '\0';
      if (lineLen == 1 && line[0] == 'T') {
        report();
      }
      lineLen = 0;
    } else if (lineLen < sizeof(line) - 1) {
      line[lineLen++] = (char)c;
    } else {
      lineLen = 0;  // overlong: not a request
    }
  }
#else
  unsigned long now = millis();
  if (now - lastReport >= PERIOD_MS) {  // unsigned arithmetic survives the millis() wrap
    lastReport = now;
    report();
  }
#endif
}
