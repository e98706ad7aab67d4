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
uint8_t f32_to_fp8e4m3(float v);

inline constexpr float kFp8E4M3Max = 448.0f;

// Converts n elements of type `src_type` to f32 (src_type must be a floating type).
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);
// Converts n f32 values into `dst_type` (a floating type).
void convert_from_f32(DType dst_type, const float* src, void* dst, size_t n);

}  // namespace pdserve
