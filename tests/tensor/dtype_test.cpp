// Exactness of the scalar conversions, checked against oracles written here from the format
// definitions (value formulas and round-to-nearest-even by comparing distances in double).
#include "tensor/dtype.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve {
namespace {

// A binary float format with `mant_bits` stored mantissa bits and `exp_bits` exponent bits.
struct Format {
  int exp_bits, mant_bits, bias;
  uint32_t max_finite;     // largest positive finite pattern
  bool has_inf;            // IEEE-style all-ones exponent = inf/NaN (bf16, f16); e4m3fn has none
  uint32_t sign_bit() const { return 1u << (exp_bits + mant_bits); }
};
constexpr Format kBF16{8, 7, 127, 0x7F7F, true};
constexpr Format kF16{5, 10, 15, 0x7BFF, true};
constexpr Format kE4M3{4, 3, 7, 0x7E, false};

// The value of a pattern by the format's definition (NaN for NaN patterns).
double value_of(const Format& f, uint32_t p) {
  const uint32_t sign = p & f.sign_bit();
  const uint32_t mag = p & (f.sign_bit() - 1);
  const uint32_t exp = mag >> f.mant_bits, mant = mag & ((1u << f.mant_bits) - 1);
  const uint32_t exp_max = (1u << f.exp_bits) - 1;
  double v;
  if (f.has_inf && exp == exp_max) {
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (!f.has_inf && mag > f.max_finite) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), 1 - f.bias - f.mant_bits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(mant), -f.mant_bits), static_cast<int>(exp) - f.bias);
  }
  return sign ? -v : v;
}

// Round-to-nearest-even of a finite float: the overflow neighbour of max_finite is inf (its
// value the next power of two) for IEEE formats, and max_finite itself for the saturating fp8.
uint32_t round_oracle(const Format& f, float x) {
  const double a = std::fabs(static_cast<double>(x));
  const uint32_t sign = std::signbit(x) ? f.sign_bit() : 0;
  uint32_t lo = 0, hi = f.max_finite;  // largest p with value(p) <= a
  while (lo < hi) {
    uint32_t mid = (lo + hi + 1) / 2;
    if (value_of(f, mid) <= a) lo = mid; else hi = mid - 1;
  }
  const uint32_t p = lo;
  double next_value;
  if (p == f.max_finite) {
    if (!f.has_inf) return sign | p;  // saturate
    next_value = std::ldexp(1.0, (1 << (f.exp_bits - 1)));  // 2^(emax+1)
  } else {
    next_value = value_of(f, p + 1);
  }
  const double below = a - value_of(f, p), above = next_value - a;
  if (below < above) return sign | p;
  if (above < below) return sign | (p + 1);
  return sign | ((p & 1) ? p + 1 : p);
}

float f32_from_bits(uint32_t u) { return std::bit_cast<float>(u); }

// ---- bf16 ---------------------------------------------------------------------------------------

TEST(BF16, DecodeMatchesDefinitionForAllPatterns) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const double want = value_of(kBF16, p);
    const float got = bf16_to_f32(static_cast<uint16_t>(p));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << p;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << p;
      ASSERT_EQ(std::signbit(got), (p & 0x8000) != 0) << std::hex << p;
    }
  }
}

TEST(BF16, AllPatternsRoundTrip) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint16_t back = f32_to_bf16(bf16_to_f32(static_cast<uint16_t>(p)));
    if (std::isnan(bf16_to_f32(static_cast<uint16_t>(p)))) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(back))) << std::hex << p;
      ASSERT_EQ(back & 0x8000, p & 0x8000) << "NaN keeps its sign " << std::hex << p;
    } else {
      ASSERT_EQ(back, p) << std::hex << p;
    }
  }
}

TEST(BF16, RoundsToNearestEvenByHand) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3F808000)), 0x3F80);  // tie, 0x3F80 even: down
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3F818000)), 0x3F82);  // tie, 0x3F81 odd: up
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3F808001)), 0x3F81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3F817FFF)), 0x3F81);  // just below the tie
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0xBF818000)), 0xBF82);  // negative tie
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // overflows to inf
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x7F7F7FFF)), 0x7F7F);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x00008000)), 0x0000);  // subnormal tie to even 0
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x00018000)), 0x0002);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f32_from_bits(0x7F800001)))));  // low-bit NaN
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f32_from_bits(0xFFFFFFFF)))));
}

// Every midpoint between neighbours, and the floats right beside it, in both signs.
void check_midpoints(const Format& f, uint16_t (*encode)(float), uint32_t last) {
  for (uint32_t p = 0; p <= last; ++p) {
    const double lo = value_of(f, p);
    const double hi = p == f.max_finite ? std::ldexp(1.0, 1 << (f.exp_bits - 1)) : value_of(f, p + 1);
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << "midpoint must be a float";
    const uint32_t even = (p & 1) ? p + 1 : p;
    for (uint32_t sign : {0u, f.sign_bit()}) {
      const float s = sign ? -1.0f : 1.0f;
      ASSERT_EQ(encode(s * mid), sign | even) << std::hex << p;
      ASSERT_EQ(encode(s * std::nextafter(mid, 0.0f)), sign | p) << std::hex << p;
      ASSERT_EQ(encode(s * std::nextafter(mid, INFINITY)), sign | (p + 1)) << std::hex << p;
    }
  }
}

TEST(BF16, MidpointsBetweenAllNeighbours) { check_midpoints(kBF16, f32_to_bf16, kBF16.max_finite); }

TEST(BF16, RandomFloatsMatchOracle) {
  std::mt19937 rng(1);
  for (int i = 0; i < 1000000; ++i) {
    const float x = f32_from_bits(static_cast<uint32_t>(rng()));
    if (std::isnan(x)) continue;
    if (std::isinf(x)) continue;
    ASSERT_EQ(f32_to_bf16(x), round_oracle(kBF16, x)) << std::hexfloat << x;
  }
}

// ---- f16 ----------------------------------------------------------------------------------------

TEST(F16, DecodeMatchesDefinitionAndRoundTripsForAllPatterns) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const double want = value_of(kF16, p);
    const float got = f16_to_f32(static_cast<uint16_t>(p));
    const uint16_t back = f32_to_f16(got);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << p;
      ASSERT_TRUE(std::isnan(f16_to_f32(back))) << "NaN stays NaN " << std::hex << p;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << p;
      ASSERT_EQ(std::signbit(got), (p & 0x8000) != 0) << std::hex << p;
      ASSERT_EQ(back, p) << std::hex << p;
    }
  }
}

TEST(F16, RoundingByHand) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);              // tie between 1 and 1+2^-10: even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);          // tie, odd below: up
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);   // just above the tie
  EXPECT_EQ(f32_to_f16(2047.5f), 0x6800);                      // tie 2047|2048 -> 2048 (even)
  EXPECT_EQ(f32_to_f16(-1.5f), 0xBE00);
  // Subnormals: quantum 2^-24.
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);                     // tie 0|1 -> 0
  EXPECT_EQ(f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);                 // tie 1|2 -> 2
  EXPECT_EQ(f32_to_f16(0x1p-26f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0x1p-26f), 0x8000);                    // underflow keeps the sign
  EXPECT_EQ(f32_to_f16(0x3FFp-24f), 0x03FF);                   // largest subnormal
  EXPECT_EQ(f32_to_f16(0x7FFp-25f), 0x0400);                   // tie -> smallest normal (even)
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(0x1p-130f), 0x0000);                    // f32 subnormal input
  // Overflow: 65504 is max; 65520 is the tie with "65536" and goes to inf.
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xFC00);
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7C00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xFC00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
}

TEST(F16, MidpointsBetweenAllNeighbours) { check_midpoints(kF16, f32_to_f16, kF16.max_finite); }

TEST(F16, RandomFloatsMatchOracle) {
  std::mt19937 rng(2);
  std::uniform_int_distribution<int> exp(-30, 17);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng());
    // Random mantissa and sign; exponents around f16's range so that few results are 0 or inf.
    const float x = std::ldexp(f32_from_bits((bits & 0x807FFFFF) | 0x3F800000), exp(rng));
    ASSERT_EQ(f32_to_f16(x), round_oracle(kF16, x)) << std::hexfloat << x;
  }
}

// ---- fp8 e4m3 -----------------------------------------------------------------------------------

TEST(FP8E4M3, HandPickedPatterns) {
  EXPECT_EQ(fp8e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0xFE), -448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x08), 0x1p-6f);      // smallest normal
  EXPECT_EQ(fp8e4m3_to_f32(0x01), 0x1p-9f);      // smallest subnormal
  EXPECT_EQ(fp8e4m3_to_f32(0x07), 7 * 0x1p-9f);  // largest subnormal
  EXPECT_EQ(fp8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x40), 2.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x77), 240.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x78), 256.0f);       // exponent 15 is finite in e4m3fn
  EXPECT_EQ(fp8e4m3_to_f32(0x00), 0.0f);
  EXPECT_FALSE(std::signbit(fp8e4m3_to_f32(0x00)));
  EXPECT_EQ(fp8e4m3_to_f32(0x80), 0.0f);
  EXPECT_TRUE(std::signbit(fp8e4m3_to_f32(0x80)));
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(0xFF)));
}

TEST(FP8E4M3, AllPatternsDecodeToOcpValuesAndRoundTrip) {
  int nans = 0;
  for (uint32_t p = 0; p < 256; ++p) {
    const double want = value_of(kE4M3, p);
    const float got = fp8e4m3_to_f32(static_cast<uint8_t>(p));
    if (std::isnan(want)) {
      ++nans;
      ASSERT_TRUE(std::isnan(got)) << std::hex << p;
      ASSERT_TRUE(std::isnan(fp8e4m3_to_f32(f32_to_fp8e4m3(got))));
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << p;
      ASSERT_EQ(std::signbit(got), (p & 0x80) != 0) << std::hex << p;
      ASSERT_EQ(f32_to_fp8e4m3(got), p) << std::hex << p;
    }
  }
  EXPECT_EQ(nans, 2);
}

TEST(FP8E4M3, SaturationAndSpecials) {
  EXPECT_EQ(f32_to_fp8e4m3(1000.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8e4m3(-1000.0f), 0xFE);
  EXPECT_EQ(f32_to_fp8e4m3(464.0f), 0x7E);   // would be a tie with 480 if it existed
  EXPECT_EQ(f32_to_fp8e4m3(449.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8e4m3(INFINITY), 0x7E);
  EXPECT_EQ(f32_to_fp8e4m3(-INFINITY), 0xFE);
  EXPECT_EQ(fp8e4m3_to_f32(f32_to_fp8e4m3(-INFINITY)), -448.0f);
  EXPECT_EQ(f32_to_fp8e4m3(std::numeric_limits<float>::max()), 0x7E);
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(f32_to_fp8e4m3(NAN))));
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(f32_to_fp8e4m3(-NAN))));
  EXPECT_EQ(f32_to_fp8e4m3(-0.0f), 0x80);
  EXPECT_EQ(f32_to_fp8e4m3(1e-30f), 0x00);
}

TEST(FP8E4M3, RoundHalfEvenBetweenNeighbours) {
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38);     // tie 1|1.125 -> 1 (0x38 even)
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3A);     // tie 1.125|1.25 -> 1.25 (0x3A)
  EXPECT_EQ(f32_to_fp8e4m3(1.07f), 0x39);
  EXPECT_EQ(f32_to_fp8e4m3(432.0f), 0x7E);      // tie 416|448 -> 448 (0x7E even)
  EXPECT_EQ(f32_to_fp8e4m3(400.0f), 0x7C);      // tie 384|416 -> 384 (0x7C even)
  EXPECT_EQ(f32_to_fp8e4m3(401.0f), 0x7D);
  EXPECT_EQ(f32_to_fp8e4m3(0x1p-10f), 0x00);    // tie 0|2^-9 -> 0
  EXPECT_EQ(f32_to_fp8e4m3(3 * 0x1p-10f), 0x02);
  EXPECT_EQ(f32_to_fp8e4m3(15 * 0x1p-10f), 0x08);  // tie 7*2^-9|2^-6 -> 0x08 (even)
  EXPECT_EQ(f32_to_fp8e4m3(-1.1875f), 0xBA);
  // All neighbours, both signs, and the floats beside each midpoint.
  auto enc = [](float x) { return static_cast<uint16_t>(f32_to_fp8e4m3(x)); };
  for (uint32_t p = 0; p < kE4M3.max_finite; ++p) {
    const double mid = (value_of(kE4M3, p) + value_of(kE4M3, p + 1)) / 2;
    const uint32_t even = (p & 1) ? p + 1 : p;
    const float m = static_cast<float>(mid);
    for (float s : {1.0f, -1.0f}) {
      const uint32_t sign = s < 0 ? 0x80 : 0;
      ASSERT_EQ(enc(s * m), sign | even) << std::hex << p;
      ASSERT_EQ(enc(s * std::nextafter(m, 0.0f)), sign | p) << std::hex << p;
      ASSERT_EQ(enc(s * std::nextafter(m, INFINITY)), sign | (p + 1)) << std::hex << p;
    }
  }
}

TEST(FP8E4M3, RandomFloatsMatchOracle) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> exp(-12, 10);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng());
    const float x = std::ldexp(f32_from_bits((bits & 0x807FFFFF) | 0x3F800000), exp(rng));
    ASSERT_EQ(f32_to_fp8e4m3(x), round_oracle(kE4M3, x)) << std::hexfloat << x;
  }
}

// ---- array conversions and metadata -------------------------------------------------------------

TEST(Convert, ArraysAgreeWithScalars) {
  std::vector<float> src = {0.0f, -0.0f, 1.0f, -2.5f, 3.14159f, 1e-7f, 448.0f, 65504.0f, -1e4f};
  for (DType t : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF32}) {
    std::vector<uint8_t> buf(src.size() * dtype_size(t));
    convert_from_f32(t, src.data(), buf.data(), src.size());
    std::vector<float> back(src.size());
    convert_to_f32(t, buf.data(), back.data(), src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      float want;
      switch (t) {
        case DType::kBF16: want = bf16_to_f32(f32_to_bf16(src[i])); break;
        case DType::kF16: want = f16_to_f32(f32_to_f16(src[i])); break;
        case DType::kF8E4M3: want = fp8e4m3_to_f32(f32_to_fp8e4m3(src[i])); break;
        default: want = src[i];
      }
      EXPECT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(want)) << dtype_name(t) << " " << i;
    }
  }
  float f = 0;
  int32_t dummy = 0;
  EXPECT_THROW(convert_to_f32(DType::kI32, &dummy, &f, 1), std::logic_error);
  EXPECT_THROW(convert_from_f32(DType::kI64, &f, &dummy, 0), std::logic_error);
}

TEST(DTypeInfo, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kI32, DType::kI64})
    EXPECT_EQ(dtype_from_safetensors(dtype_safetensors_name(t)), t);
  EXPECT_EQ(dtype_from_safetensors("F8_E5M2"), std::nullopt);
  EXPECT_STREQ(dtype_safetensors_name(DType::kF8E4M3), "F8_E4M3");
}

}  // namespace
}  // namespace pdserve
