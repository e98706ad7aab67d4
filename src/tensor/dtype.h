// Element types and exact scalar conversions.
//
// bf16 and f16 round to nearest even. fp8 is OCP e4m3 ("e4m3fn"): bias 7, no infinities, one NaN
// pattern per sign (S.1111.111), max finite 448. Conversion to fp8 saturates finite values and
// infinities to ±448 (as PyTorch's `to(float8_e4m3fn)` does not, but DeepSeek's quantiser clamps
// before casting, so saturation is the behaviour weights see) and maps NaN to NaN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace pdserve {

enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kI32, kI64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);                        // "f32", "bf16", ...
std::optional<DType> dtype_from_safetensors(std::string_view s);  // "BF16" -> kBF16
const char* dtype_safetensors_name(DType t);            // kBF16 -> "BF16"

float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float v);
float fp8e4m3_to_f32(uint8_t v);

inline constexpr float kFp8E4M3Max = 448.0f;

// f32 -> fp8 e4m3, round to nearest even, saturating at ±448, NaN -> 0x7F. Inline integer code
// (a few ns): the dummy FP8 checkpoint of a large model converts tens of billions of values at
// start-up. tests/tensor/dtype_test.cpp checks it against a frexp/nearbyint reference.
inline uint8_t f32_to_fp8e4m3(float v) {
  uint32_t x;
  __builtin_memcpy(&x, &v, 4);
  const uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return 0x7F;                  // NaN (sign dropped)
  if (ax >= 0x43E00000u) return sign | 0x7E;          // |v| >= 448, infinities included
  if (ax < 0x3C800000u) {                             // |v| < 2^-6: subnormal grid 2^-9
    float a;
    __builtin_memcpy(&a, &ax, 4);
    // a * 512 is exact and below 8; adding 2^23 rounds it to an integer, half to even.
    const float q = (a * 512.0f + 8388608.0f) - 8388608.0f;
    return sign | static_cast<uint8_t>(q);            // q == 8 is the smallest normal (0x08)
  }
  // Normal: keep 3 of the 23 mantissa bits, rounding at bit 20 half to even; a carry out of the
  // mantissa bumps the exponent, as it should.
  const uint32_t r = ax + 0x7FFFFu + ((ax >> 20) & 1u);
  const uint32_t code = ((((r >> 23) - 127u + 7u) << 3) | ((r >> 20) & 7u));
  return sign | static_cast<uint8_t>(code > 0x7Eu ? 0x7Eu : code);
}

// Converts n elements of type `src_type` to f32 (src_type must be a floating type).
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);
// Converts n f32 values into `dst_type` (a floating type).
void convert_from_f32(DType dst_type, const float* src, void* dst, size_t n);

}  // namespace pdserve
