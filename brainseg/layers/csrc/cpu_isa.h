// Run-time instruction-set dispatch of brainseg's CPU kernels.
//
// A kernel body is written once (a struct with a static, always-inlined `run`) and compiled three
// times on x86-64 with GCC/Clang: baseline (SSE2), AVX2 + FMA and AVX-512, through the wrappers
// below; run_for_isa<Tasks>(args...) calls the variant of the widest instruction set allowed. That
// is the one PyTorch's own CPU kernels run (at::get_cpu_capability(), which honours
// ATEN_CPU_CAPABILITY=default|avx2|avx512), provided the CPU has the extra features the variant is
// compiled with (FMA, AVX-512 VL). Elsewhere the baseline build runs.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <string>

#if defined(__GNUC__)
#define BRAINSEG_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define BRAINSEG_ALWAYS_INLINE inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define BRAINSEG_X86_DISPATCH 1
#else
#define BRAINSEG_X86_DISPATCH 0
#endif

namespace brainseg {

enum class CpuIsa { kDefault, kAvx2, kAvx512 };

// The instruction set the kernels run, decided once per process.
inline CpuIsa kernel_isa() {
  static const CpuIsa isa = [] {
#if BRAINSEG_X86_DISPATCH
    __builtin_cpu_init();
    const std::string torch_isa = at::get_cpu_capability();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    if (torch_isa == "AVX512" && avx512) {
      return CpuIsa::kAvx512;
    }
    if ((torch_isa == "AVX512" || torch_isa == "AVX2") && avx2) {
      return CpuIsa::kAvx2;
    }
#endif
    return CpuIsa::kDefault;
  }();
  return isa;
}

// kernel_isa() as "avx512", "avx2" or "default".
inline std::string kernel_isa_name() {
  switch (kernel_isa()) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

namespace isa_detail {
#if BRAINSEG_X86_DISPATCH
// Tasks::run(args...) compiled for AVX2 / AVX-512. Tasks::run is always inlined, so its loops are
// vectorised for the target of the wrapper that calls it.
template <typename Tasks, typename... Args>
__attribute__((target("avx2,fma"))) void run_avx2(Args... args) {
  Tasks::run(args...);
}

template <typename Tasks, typename... Args>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void run_avx512(Args... args) {
  Tasks::run(args...);
}
#endif
}  // namespace isa_detail

// Tasks::run(args...) on the variant of kernel_isa() (the baseline build when none applies).
template <typename Tasks, typename... Args>
void run_for_isa(Args... args) {
#if BRAINSEG_X86_DISPATCH
  switch (kernel_isa()) {
    case CpuIsa::kAvx512:
      return isa_detail::run_avx512<Tasks>(args...);
    case CpuIsa::kAvx2:
      return isa_detail::run_avx2<Tasks>(args...);
    default:
      break;
  }
#endif
  Tasks::run(args...);
}

}  // namespace brainseg
