// Host stand-in for the parts of Arduino.h the sketch uses (tests only).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>

#define F(s) (s)

unsigned long millis();

class HardwareSerial {
 public:
  void begin(long) {}
  void print(const char *s) { fputs(s, stdout); }
  // Arduino's Print::printFloat, with float arithmetic as on AVR (double is 32 bits there).
  void print(float number, int digits) {
    if (std::isnan(number)) { fputs("nan", stdout); return; }
    if (std::isinf(number)) { fputs("inf", stdout); return; }
    if (number < 0.0f) { fputc('-', stdout); number = -number; }
    float rounding = 0.5f;
    for (int i = 0; i < digits; ++i) rounding /= 10.0f;
    number += rounding;
    unsigned long int_part = (unsigned long)number;
    float remainder = number - (float)int_part;
    printf("%lu", int_part);
    if (digits > 0) fputc('.', stdout);
    while (digits-- > 0) {
      remainder *= 10.0f;
      unsigned int d = (unsigned int)remainder;
      printf("%u", d);
      remainder -= (float)d;
    }
  }
  int available() { return (int)input.size(); }
  int read() {
    if (input.empty()) return -1;
    int c = input.front();
    input.pop_front();
    return c;
  }
  std::deque<int> input;
};

extern HardwareSerial Serial;
