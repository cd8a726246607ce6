// AMX tile registers for the int8 kernel: their configuration, the instructions it uses, the
// permission Linux asks for before a process may touch them, and a software copy of those
// instructions that runs on any CPU.
//
// The software copy does what the Intel SDM says each instruction does, on plain arrays: the
// tile pass in qlinear.h is written once against either, so a CPU without AMX still checks the
// pass's indexing and arithmetic (bit for bit against the VNNI pass), and a CPU with AMX checks
// the hardware against both.
#pragma once

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace chatfleet::tiles {

// LDTILECFG's 64-byte operand, palette 1: per tile register, its rows and bytes per row.
struct alignas(64) Config {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(Config) == 64, "LDTILECFG reads 64 bytes");

// Whether this process may run tile instructions: the CPU has AMX-TILE and AMX-INT8, and Linux
// granted the tile data state (ARCH_REQ_XCOMP_PERM; without it the first tile instruction
// kills the process, as native llama.cpp builds find). Asked once per process; the grant is
// process-wide, so OpenMP threads started earlier hold it too.
inline bool ready() {
  static const bool granted = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
    const bool amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
    if (!amx_tile || !amx_int8) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return granted;
}

// The hardware: each call one instruction on tile register T. Written as assembly: the
// register is a template argument (the compiler's intrinsics want a literal), and the build's
// -march=native leaves the AMX intrinsics out on CPUs without it, where this code is compiled
// but never run.
struct Hardware {
  static void configure(const Config& c) { asm volatile("ldtilecfg %0" ::"m"(c)); }
  static void release() { asm volatile("tilerelease" ::); }
  template <int T>
  static void zero() {
    asm volatile("tilezero %%tmm%c0" ::"i"(T));
  }
  template <int T>
  static void load(const void* p, int64_t stride) {
    asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(p), "r"(stride), "i"(T) : "memory");
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(p), "r"(stride), "i"(T) : "memory");
  }
  // C += A . B: signed bytes of A times unsigned bytes of B, four products to each int32 lane.
  template <int C, int A, int B>
  static void dot() {
    asm volatile("tdpbsud %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
  }
};

// The same instructions on arrays (one set per thread, as each thread has its own registers).
struct Emulated {
  struct State {
    Config config;
    alignas(64) uint8_t reg[8][16][64];
  };
  static State& state() {
    static thread_local State s;
    return s;
  }
  static void configure(const Config& c) {
    state().config = c;
    std::memset(state().reg, 0, sizeof(State::reg));
  }
  static void release() { configure(Config{}); }
  template <int T>
  static void zero() {
    std::memset(state().reg[T], 0, sizeof(state().reg[T]));
  }
  // Rows past the configured ones, and bytes past a row's width, read as zero.
  template <int T>
  static void load(const void* p, int64_t stride) {
    State& s = state();
    zero<T>();
    for (int r = 0; r < s.config.rows[T]; ++r)
      std::memcpy(s.reg[T][r], static_cast<const uint8_t*>(p) + r * stride, s.config.colsb[T]);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    State& s = state();
    for (int r = 0; r < s.config.rows[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, s.reg[T][r], s.config.colsb[T]);
  }
  template <int C, int A, int B>
  static void dot() {
    State& s = state();
    const Config& c = s.config;
    // Shapes the hardware rejects (#UD): a bug in the caller's configuration.
    if (c.colsb[A] / 4 != c.rows[B] || c.rows[C] != c.rows[A] || c.colsb[C] != c.colsb[B]) {
      std::fprintf(stderr, "tiles: TDPBSUD on tiles of mismatched shapes\n");
      std::abort();
    }
    const int rows = s.config.rows[C], n = s.config.colsb[C] / 4, k = s.config.colsb[A] / 4;
    for (int m = 0; m < rows; ++m) {
      int32_t acc[16];
      std::memcpy(acc, s.reg[C][m], sizeof(acc));
      const auto* a = reinterpret_cast<const int8_t*>(s.reg[A][m]);
      for (int j = 0; j < n; ++j)
        for (int kk = 0; kk < k; ++kk)
          for (int i = 0; i < 4; ++i)  // int32 sums wrap, as the instruction's do
            acc[j] = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) +
                                          static_cast<uint32_t>(a[4 * kk + i] *
                                                                s.reg[B][kk][4 * j + i]));
      std::memcpy(s.reg[C][m], acc, sizeof(acc));
    }
  }
};

}  // namespace chatfleet::tiles
