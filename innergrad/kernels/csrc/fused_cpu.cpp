// The "fused" gradient-RNN sequence on CPU, as one C++ loop per direction (see fused.py for the math).
//
// Why C++: the Python loop issues ~45 small operations per time step. On 256 x 128 blocks each
// costs a few microseconds of Python and dispatcher time, and that part holds the GIL, so the two
// worker threads of the Python path serialise on it (measured: 1.2x from the second core). Here the
// step is a handful of BLAS calls on raw pointers plus fused elementwise loops, run without the GIL,
// with blocks of the batch on separate OpenMP threads (the recurrence never mixes samples).
//
// Every block below is a row-major (rows x width) slice with leading dimension = width: rows
// [r0, r1) of one time step of a contiguous (T, B, width) tensor, or a per-thread scratch buffer.
// Saved tensors have the same layout as the Python path's (S: layer outputs u, or pre-activations
// a for SiLU and GELU; Q: chain products q), so either backward can follow either forward.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

// Fortran BLAS, as exported by the BLAS that PyTorch links (MKL or OpenBLAS). Weak: a build
// without them still loads, and gemm() below then goes through ATen instead.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace {

using at::Tensor;

enum Act : int64_t { SOFTPLUS = 0, TANH = 1, SIGMOID = 2, SILU = 3, GELU = 4 };

// SiLU and GELU: s' and s'' need the pre-activation a, so the saved S holds a (as in the Python
// loop) and the backward recomputes u = s(a). The others save u and derive s', s'' from it.
inline bool keeps_a(int64_t act) { return act == SILU || act == GELU; }

constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;

template <class T>
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const T* alpha,
               const T* a, const int* lda, const T* b, const int* ldb, const T* beta, T* c, const int* ldc);
template <>
void blas_gemm<float>(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                      const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
template <>
void blas_gemm<double>(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                       const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
                       const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
template <class T>
bool have_blas() {
  return std::is_same_v<T, float> ? sgemm_ != nullptr : dgemm_ != nullptr;
}

// Row-major C (m x n, ldc) = op(A) op(B) + beta C, op(A) m x k, op(B) k x n.
template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
          T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (have_blas<T>() && k > 0) {
    // Column-major BLAS sees the transposes: C^T = op(B)^T op(A)^T.
    const char ca = tb ? 'T' : 'N', cb = ta ? 'T' : 'N';
    const int M = n, N = m, K = k, LDA = ldb, LDB = lda, LDC = ldc;
    const T one = 1;
    blas_gemm<T>(&ca, &cb, &M, &N, &K, &one, B, &LDA, A, &LDB, &beta, C, &LDC);
    return;
  }
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = ta ? at::from_blob(const_cast<T*>(A), {k, m}, {lda, 1}, opt).t()
                : at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opt);
  Tensor b = tb ? at::from_blob(const_cast<T*>(B), {n, k}, {ldb, 1}, opt).t()
                : at::from_blob(const_cast<T*>(B), {k, n}, {ldb, 1}, opt);
  Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  if (beta == T(0)) {
    c.copy_(at::mm(a, b));
  } else {
    c.mul_(beta).add_(at::mm(a, b));
  }
}

// --- elementwise ------------------------------------------------------------------------------
// float: exp and log1p written so that GCC vectorises the loops that call them (Cephes
// polynomials, relative error ~1e-7); double: the C library (float64 is for checks, not speed).

// Always inlined: a call inside a loop stops GCC from vectorising it (measured: SiLU 1.6x slower).
#define IG_INLINE inline __attribute__((always_inline))

IG_INLINE float exp_(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // round(x / ln 2) by the 1.5 * 2^23 trick: no rounding instruction, vectorises everywhere.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
IG_INLINE double exp_(double x) { return std::exp(x); }

// log(1 + e) for e in [0, 1] as e P(e): a least-squares fit of degree 9 on Chebyshev nodes,
// relative error 2e-7 in float32 (no division, no cancellation for small e).
IG_INLINE float log1p01_(float e) {
  float p = -3.256378481e-03f;
  p = p * e + 1.990716096e-02f;
  p = p * e + -5.706420083e-02f;
  p = p * e + 1.061426469e-01f;
  p = p * e + -1.531186311e-01f;
  p = p * e + 1.967811726e-01f;
  p = p * e + -2.495455887e-01f;
  p = p * e + 3.333000404e-01f;
  p = p * e + -4.999990399e-01f;
  p = p * e + 9.999999954e-01f;
  return p * e;
}
IG_INLINE double log1p01_(double e) { return std::log1p(e); }

template <class T>
Tensor flat(T* p, int64_t n) {
  return at::from_blob(p, {n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// a (+ bias per column) -> u = s(a) and d = s'(a); rows x n. u may be a, except for keeps_a
// activations, which also leave a + bias in a (it is what their backward needs).
template <class T>
void act_forward(int64_t act, T* a, const T* bias, T* u, T* d, int64_t rows, int64_t n) {
  if (act == SOFTPLUS) {
    for (int64_t i = 0; i < rows; ++i) {
      const T* ai = a + i * n;
      T* ui = u + i * n;
      T* di = d + i * n;
      for (int64_t j = 0; j < n; ++j) {
        const T v = bias ? ai[j] + bias[j] : ai[j];
        const T e = exp_(-std::abs(v));  // softplus(v) = max(v, 0) + log1p(e), sigmoid from the same e
        const T r = T(1) / (T(1) + e);
        di[j] = v >= T(0) ? r : e * r;
        ui[j] = std::max(v, T(0)) + log1p01_(e);
      }
    }
    return;
  }
  T* v = keeps_a(act) ? a : u;  // where a + bias goes
  if (bias) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < n; ++j) v[i * n + j] = a[i * n + j] + bias[j];
  } else if (v != a) {
    std::memcpy(v, a, sizeof(T) * rows * n);
  }
  const int64_t m = rows * n;
  if (act == TANH) {
    flat(u, m).tanh_();
    for (int64_t i = 0; i < m; ++i) d[i] = T(1) - u[i] * u[i];
  } else if (act == SIGMOID) {
    flat(u, m).sigmoid_();
    for (int64_t i = 0; i < m; ++i) d[i] = u[i] * (T(1) - u[i]);
  } else if (act == SILU) {
    for (int64_t i = 0; i < m; ++i) {
      const T ai = a[i];  // (u may be a)
      const T s = T(1) / (T(1) + exp_(-ai));
      u[i] = ai * s;
      d[i] = s * (T(1) + ai * (T(1) - s));
    }
  } else {  // GELU (exact, erf): erf from ATen's vectorised kernel
    for (int64_t i = 0; i < m; ++i) d[i] = a[i] * T(kInvSqrt2);
    flat(d, m).erf_();
    for (int64_t i = 0; i < m; ++i) {
      const T ai = a[i];
      const T cdf = T(0.5) * (T(1) + d[i]), pdf = exp_(T(-0.5) * ai * ai) * T(kInvSqrt2Pi);
      u[i] = ai * cdf;
      d[i] = cdf + ai * pdf;
    }
  }
}

// a -> (u = s(a), s'(a), s''(a)) for the keeps_a activations.
template <class T>
void act_from_a(int64_t act, const T* a, T* u, T* d, T* e, int64_t count) {
  if (act == SILU) {
    for (int64_t i = 0; i < count; ++i) {
      const T s = T(1) / (T(1) + exp_(-a[i]));
      u[i] = a[i] * s;
      d[i] = s * (T(1) + a[i] * (T(1) - s));
      e[i] = s * (T(1) - s) * (T(2) + a[i] * (T(1) - T(2) * s));
    }
  } else {  // GELU
    for (int64_t i = 0; i < count; ++i) e[i] = a[i] * T(kInvSqrt2);
    flat(e, count).erf_();
    for (int64_t i = 0; i < count; ++i) {
      const T cdf = T(0.5) * (T(1) + e[i]), pdf = exp_(T(-0.5) * a[i] * a[i]) * T(kInvSqrt2Pi);
      u[i] = a[i] * cdf;
      d[i] = cdf + a[i] * pdf;
      e[i] = pdf * (T(2) - a[i] * a[i]);
    }
  }
}

// u = s(a) -> (s'(a), s''(a)), without a transcendental function where there is a choice.
template <class T>
void act_from_u(int64_t act, const T* u, T* d, T* e, int64_t count) {
  if (act == SOFTPLUS) {
    for (int64_t i = 0; i < count; ++i) {
      const T ex = exp_(-u[i]);  // = 1 - sigmoid(a)
      d[i] = T(1) - ex;
      e[i] = d[i] * ex;
    }
  } else if (act == TANH) {
    for (int64_t i = 0; i < count; ++i) {
      d[i] = T(1) - u[i] * u[i];
      e[i] = T(-2) * u[i] * d[i];
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      d[i] = u[i] * (T(1) - u[i]);
      e[i] = (T(1) - T(2) * u[i]) * d[i];
    }
  }
}

// acc[j] += sum_i m[i, j]
template <class T>
void add_colsum(T* acc, const T* m, int64_t rows, int64_t n) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) acc[j] += m[i * n + j];
}

// --- the model ----------------------------------------------------------------------------------

template <class T>
struct Net {
  int64_t L, dx, dh, din;
  std::vector<int64_t> n;      // widths n_1..n_L (index 0..L-1)
  std::vector<const T*> W, b;  // W_k (n_k x n_{k-1}) row-major, b_k
  const T* wo;
  const T* W1h() const { return W[0] + dx; }  // (n_1 x dh) with leading dimension din

  Net(at::TensorList Ws, at::TensorList bs, const Tensor& wo_, int64_t dx_)
      : L(static_cast<int64_t>(Ws.size())), dx(dx_) {
    din = Ws[0].size(1);
    dh = din - dx;
    for (int64_t k = 0; k < L; ++k) {
      n.push_back(Ws[k].size(0));
      W.push_back(Ws[k].data_ptr<T>());
      b.push_back(bs.empty() ? nullptr : bs[k].data_ptr<T>());
    }
    wo = wo_.data_ptr<T>();
  }
  int64_t wmax() const { return *std::max_element(n.begin(), n.end()); }
};

// Z (rows x (dx + dh)) = [x_t | h_{t-1}], the input of layer 1.
template <class T>
void layer1_input(T* Z, const T* xt, const T* hprev, int64_t rows, int64_t dx, int64_t dh) {
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(Z + i * (dx + dh), xt + i * dx, sizeof(T) * dx);
    std::memcpy(Z + i * (dx + dh) + dx, hprev + i * dh, sizeof(T) * dh);
  }
}

template <class T>
T* block(const Tensor& t, int64_t step, int64_t B, int64_t r0) {
  // Rows r0.. of time step `step` of a contiguous (T, B, w) tensor.
  const int64_t w = t.size(2);
  return t.data_ptr<T>() + (step * B + r0) * w;
}

// Blocks of the batch over the intra-op threads; one block runs inline (BLAS may then thread).
// f(tid, block, r0, r1): tid < at::get_num_threads() names the thread, so per-thread buffers
// (scratch, weight-gradient sums) serve every block that thread runs, one after the other.
template <class F>
void over_blocks(int64_t B, int64_t nblocks, const F& f) {
  nblocks = std::max<int64_t>(1, std::min(nblocks, B));
  auto run = [&](int tid, int64_t i) { f(tid, i, B * i / nblocks, B * (i + 1) / nblocks); };
  if (nblocks == 1) {
    run(0, 0);
  } else {
    at::parallel_for(0, nblocks, 1, [&](int64_t lo, int64_t hi) {
      const int tid = at::get_thread_num();
      for (int64_t i = lo; i < hi; ++i) run(tid, i);
    });
  }
}

// Largest block of over_blocks(B, nblocks, ...).
inline int64_t max_block_rows(int64_t B, int64_t nblocks) {
  nblocks = std::max<int64_t>(1, std::min(nblocks, B));
  return (B + nblocks - 1) / nblocks;
}

// One uninitialised scratch array per thread, made on the thread's first block: a zeroed
// std::vector per block cost a memset of the whole working set each call (measured ~1.8 MB per
// block at width 200), which a single call (T = 1) does not amortise over time steps.
template <class T>
struct Scratch {
  std::vector<std::unique_ptr<T[]>> bufs;
  int64_t n;
  explicit Scratch(int64_t n_) : bufs(static_cast<size_t>(std::max(1, at::get_num_threads()))), n(n_) {}
  T* get(int tid) {
    auto& b = bufs.at(static_cast<size_t>(tid));
    if (!b) b.reset(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
    return b.get();
  }
};

template <class T>
void forward_impl(at::TensorList S, at::TensorList Q, const Tensor& hs, const Tensor& y, const Tensor& x,
                  const Tensor& h0, const Tensor& valid, const Net<T>& net, const T* bo, int64_t act,
                  int64_t nblocks) {
  const int64_t Tn = hs.size(0), B = hs.size(1), L = net.L, dh = net.dh, dx = net.dx, din = net.din;
  const bool* vm = valid.numel() ? valid.data_ptr<bool>() : nullptr;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const int64_t wm = net.wmax(), rmax = max_block_rows(B, nblocks);
  Scratch<T> scratch(rmax * wm * (2 * L + 2) + rmax * din);
  over_blocks(B, nblocks, [&](int tid, int64_t, int64_t r0, int64_t r1) {
    const int64_t nb = r1 - r0;
    T* sp = scratch.get(tid);
    auto D = [&](int64_t k) { return sp + nb * wm * k; };        // s'(a_k)
    auto G = [&](int64_t k) { return sp + nb * wm * (L + k); };  // g_k
    auto A = [&](int64_t k) { return sp + nb * wm * (2 * L + k % 2); };  // a_k not kept
    T* Z = sp + nb * wm * (2 * L + 2);  // [x_t | h_{t-1}], the input of layer 1
    const T* hprev = h0.data_ptr<T>() + r0 * dh;
    for (int64_t t = 0; t < Tn; ++t) {
      // Layer 1 reads x_t and h together: one product over din columns (the x part alone, dx
      // columns, runs at a tenth of the BLAS's speed).
      layer1_input<T>(Z, xp + (t * B + r0) * dx, hprev, nb, dx, dh);
      const T* u = Z;
      for (int64_t k = 0; k < L; ++k) {
        T* ak = S[k].numel() ? block<T>(S[k], t, B, r0) : A(k);
        const int64_t nin = k == 0 ? din : net.n[k - 1];
        gemm<T>(false, true, nb, net.n[k], nin, u, nin, net.W[k], nin, T(0), ak, net.n[k]);
        // u_k overwrites a_k, unless a_k is saved (keeps_a): then u_k goes to scratch.
        T* uk = keeps_a(act) && S[k].numel() ? A(k) : ak;
        act_forward<T>(act, ak, net.b[k], uk, D(k), nb, net.n[k]);
        u = uk;
      }
      const int64_t nL = net.n[L - 1];
      T* yt = yp + t * B + r0;
      gemm<T>(false, false, nb, 1, nL, u, nL, net.wo, 1, T(0), yt, 1);  // y = u_L . w_o (+ b_o)
      for (int64_t i = 0; i < nb; ++i) {
        if (bo) yt[i] += *bo;
        if (vm && !vm[t * B + r0 + i]) yt[i] = T(0);
      }
      for (int64_t i = 0; i < nb; ++i)
        for (int64_t j = 0; j < nL; ++j) G(L - 1)[i * nL + j] = D(L - 1)[i * nL + j] * net.wo[j];
      for (int64_t k = L - 2; k >= 0; --k) {
        T* q = Q[k].numel() ? block<T>(Q[k], t, B, r0) : G(k);  // (not kept: g_k overwrites q_k in place)
        gemm<T>(false, false, nb, net.n[k], net.n[k + 1], G(k + 1), net.n[k + 1], net.W[k + 1], net.n[k], T(0), q,
                net.n[k]);
        for (int64_t i = 0; i < nb * net.n[k]; ++i) G(k)[i] = D(k)[i] * q[i];
      }
      T* hn = block<T>(hs, t, B, r0);
      gemm<T>(false, false, nb, dh, net.n[0], G(0), net.n[0], net.W1h(), din, T(0), hn, dh);
      if (vm) {
        for (int64_t i = 0; i < nb; ++i)
          if (!vm[t * B + r0 + i]) std::memcpy(hn + i * dh, hprev + i * dh, sizeof(T) * dh);
      }
      hprev = hn;
    }
  });
}

template <class T>
std::tuple<Tensor, std::vector<Tensor>> backward_impl(at::TensorList S, at::TensorList Q,
                                                      const Tensor& hs, const Tensor& h0, const Tensor& x,
                                                      const Tensor& valid, const Tensor& yb, const Tensor& HB,
                                                      const Tensor& gx, const Net<T>& net, int64_t act,
                                                      int64_t nblocks, bool need_params) {
  const int64_t Tn = hs.size(0), B = hs.size(1), L = net.L, dh = net.dh, dx = net.dx, din = net.din;
  const bool* vm = valid.numel() ? valid.data_ptr<bool>() : nullptr;
  const T* ybp = yb.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* gxp = gx.numel() ? gx.data_ptr<T>() : nullptr;
  Tensor gh0 = at::empty({B, dh}, h0.options());
  nblocks = std::max<int64_t>(1, std::min(nblocks, B));
  // Per thread: [dW_1 .. dW_L, db_1 .. db_L, dw_o], summed over threads in a fixed order at the end
  // (a thread's blocks run one after the other, so they share its sums).
  std::vector<std::vector<Tensor>> acc(static_cast<size_t>(std::max(1, at::get_num_threads())));
  if (need_params) {
    for (auto& a : acc) {
      for (int64_t k = 0; k < L; ++k) a.push_back(at::zeros({net.n[k], k == 0 ? din : net.n[k - 1]}, h0.options()));
      for (int64_t k = 0; k < L; ++k) a.push_back(at::zeros({net.n[k]}, h0.options()));
      a.push_back(at::zeros({net.n[L - 1]}, h0.options()));
    }
  }
  const int64_t wm = net.wmax(), rmax = max_block_rows(B, nblocks);
  Scratch<T> scratch(rmax * wm * (7 * L) + rmax * dh * 3 + rmax * din);
  over_blocks(B, nblocks, [&](int tid, int64_t, int64_t r0, int64_t r1) {
    const int64_t nb = r1 - r0;
    T* sp = scratch.get(tid);
    auto buf = [&](int64_t i) { return sp + nb * wm * i; };
    auto D = [&](int64_t k) { return buf(k); };          // s'
    auto E = [&](int64_t k) { return buf(L + k); };      // s''
    auto QB = [&](int64_t k) { return buf(2 * L + k); };  // dL/dq_k
    auto AA = [&](int64_t k) { return buf(3 * L + k); }; // s'' term of dL/da_k
    auto AB = [&](int64_t k) { return buf(4 * L + k); }; // dL/da_k
    auto GK = [&](int64_t k) { return buf(5 * L + k); }; // g_k; first dL/dg_k
    auto U = [&](int64_t k) { return buf(6 * L + k); };  // u_k recomputed from a_k (keeps_a)
    T* hb = sp + nb * wm * 7 * L;
    T* carry = hb + nb * dh;
    T* passed = carry + nb * dh;
    T* Z = passed + nb * dh;  // [x_t | h_{t-1}], the input of layer 1
    std::fill(carry, carry + nb * dh, T(0));
    std::vector<T*> dW, db;
    T* dwo = nullptr;
    if (need_params) {
      auto& a = acc.at(static_cast<size_t>(tid));
      for (int64_t k = 0; k < L; ++k) dW.push_back(a[k].data_ptr<T>());
      for (int64_t k = 0; k < L; ++k) db.push_back(a[L + k].data_ptr<T>());
      dwo = a[2 * L].data_ptr<T>();
    }
    for (int64_t t = Tn - 1; t >= 0; --t) {
      if (HB.numel()) {
        const T* hbt = block<T>(HB, t, B, r0);
        for (int64_t i = 0; i < nb * dh; ++i) hb[i] = carry[i] + hbt[i];
      } else {
        std::memcpy(hb, carry, sizeof(T) * nb * dh);
      }
      if (vm) {  // an invalid step holds h: its gradient passes straight through
        for (int64_t i = 0; i < nb; ++i)
          if (!vm[t * B + r0 + i]) {
            std::memcpy(passed + i * dh, hb + i * dh, sizeof(T) * dh);
            std::fill(hb + i * dh, hb + (i + 1) * dh, T(0));
          }
      }
      const T* ybt = ybp + t * B + r0;
      const T* hprev = t > 0 ? block<T>(hs, t - 1, B, r0) : h0.data_ptr<T>() + r0 * dh;
      std::vector<const T*> u(static_cast<size_t>(L)), q(static_cast<size_t>(L));
      for (int64_t k = 0; k < L; ++k) {
        q[k] = k < L - 1 ? block<T>(Q[k], t, B, r0) : nullptr;
        if (keeps_a(act)) {
          act_from_a<T>(act, block<T>(S[k], t, B, r0), U(k), D(k), E(k), nb * net.n[k]);
          u[k] = U(k);
        } else {
          u[k] = block<T>(S[k], t, B, r0);
          act_from_u<T>(act, u[k], D(k), E(k), nb * net.n[k]);
        }
      }
      // Reverse of the gradient chain (linear in hb).
      gemm<T>(false, true, nb, net.n[0], dh, hb, dh, net.W1h(), din, T(0), GK(0), net.n[0]);
      for (int64_t k = 0; k < L - 1; ++k) {
        const int64_t m = nb * net.n[k];
        for (int64_t i = 0; i < m; ++i) {
          QB(k)[i] = GK(k)[i] * D(k)[i];
          AA(k)[i] = GK(k)[i] * q[k][i] * E(k)[i];
        }
        gemm<T>(false, true, nb, net.n[k + 1], net.n[k], QB(k), net.n[k], net.W[k + 1], net.n[k], T(0), GK(k + 1),
                net.n[k + 1]);
      }
      // Reverse of the value path, joined by the s'' terms.
      const int64_t nL = net.n[L - 1];
      for (int64_t i = 0; i < nb; ++i) {
        const T y = ybt[i];
        const T* gb = GK(L - 1) + i * nL;
        const T* d = D(L - 1) + i * nL;
        const T* e = E(L - 1) + i * nL;
        const T* uL = u[L - 1] + i * nL;
        T* ab = AB(L - 1) + i * nL;
        if (dwo)
          for (int64_t j = 0; j < nL; ++j) dwo[j] += gb[j] * d[j] + uL[j] * y;
        for (int64_t j = 0; j < nL; ++j) ab[j] = (gb[j] * e[j] + y * d[j]) * net.wo[j];
      }
      for (int64_t k = L - 2; k >= 0; --k) {
        gemm<T>(false, false, nb, net.n[k], net.n[k + 1], AB(k + 1), net.n[k + 1], net.W[k + 1], net.n[k], T(0),
                AB(k), net.n[k]);
        const int64_t m = nb * net.n[k];
        for (int64_t i = 0; i < m; ++i) AB(k)[i] = AA(k)[i] + AB(k)[i] * D(k)[i];
      }
      if (need_params) {
        // g_k = s'(a_k) q_k (q_L = w_o), reusing GK's buffers (dL/dg is no longer needed).
        for (int64_t k = 0; k < L; ++k) {
          const int64_t nk = net.n[k];
          for (int64_t i = 0; i < nb; ++i)
            for (int64_t j = 0; j < nk; ++j)
              GK(k)[i * nk + j] = D(k)[i * nk + j] * (k < L - 1 ? q[k][i * nk + j] : net.wo[j]);
        }
        const int64_t n1 = net.n[0];
        // One product with [x_t | h_{t-1}] instead of two (as in the forward).
        layer1_input<T>(Z, xp + (t * B + r0) * dx, hprev, nb, dx, dh);
        gemm<T>(true, false, n1, din, nb, AB(0), n1, Z, din, T(1), dW[0], din);
        gemm<T>(true, false, n1, dh, nb, GK(0), n1, hb, dh, T(1), dW[0] + dx, din);
        add_colsum<T>(db[0], AB(0), nb, n1);
        for (int64_t k = 1; k < L; ++k) {
          gemm<T>(true, false, net.n[k], net.n[k - 1], nb, AB(k), net.n[k], u[k - 1], net.n[k - 1], T(1), dW[k],
                  net.n[k - 1]);
          gemm<T>(true, false, net.n[k], net.n[k - 1], nb, GK(k), net.n[k], QB(k - 1), net.n[k - 1], T(1), dW[k],
                  net.n[k - 1]);
          add_colsum<T>(db[k], AB(k), nb, net.n[k]);
        }
      }
      gemm<T>(false, false, nb, dh, net.n[0], AB(0), net.n[0], net.W1h(), din, T(0), carry, dh);
      if (gxp) gemm<T>(false, false, nb, dx, net.n[0], AB(0), net.n[0], net.W[0], din, T(0),
                       gxp + (t * B + r0) * dx, dx);
      if (vm) {
        for (int64_t i = 0; i < nb; ++i)
          if (!vm[t * B + r0 + i]) std::memcpy(carry + i * dh, passed + i * dh, sizeof(T) * dh);
      }
    }
    std::memcpy(gh0.data_ptr<T>() + r0 * dh, carry, sizeof(T) * nb * dh);
  });
  std::vector<Tensor> grads;
  if (need_params) {
    grads = acc[0];
    for (size_t i = 1; i < acc.size(); ++i)
      for (size_t j = 0; j < grads.size(); ++j) grads[j].add_(acc[i][j]);
  }
  return {gh0, grads};
}

// --- argument checks -------------------------------------------------------------------------
// Everything the loops above rely on (sizes, dtype, contiguity), checked before any pointer is
// read. fused.py checks the shapes in Python first; these keep a wrong call an error, not a read
// past a buffer.

void check_like(const Tensor& t, const Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "innergrad fused_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "innergrad fused_cpu: ", name, " has dtype ", t.scalar_type(),
              ", x has ", x.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "innergrad fused_cpu: ", name, " must be contiguous");
}

void check_sizes(const Tensor& t, at::IntArrayRef sizes, const char* name) {
  TORCH_CHECK(t.sizes() == sizes, "innergrad fused_cpu: ", name, " must have sizes ", sizes, ", got ", t.sizes());
}

// Empty (not given) where `optional`, else of dtype x's and sizes (T, B, w).
void check_steps(const Tensor& t, const Tensor& x, int64_t w, const char* name, bool optional) {
  if (optional && t.numel() == 0) return;
  check_like(t, x, name);
  check_sizes(t, {x.size(0), x.size(1), w}, name);
}

void check_valid(const Tensor& valid, const Tensor& x) {
  if (valid.numel() == 0) return;
  TORCH_CHECK(valid.scalar_type() == at::kBool && valid.is_contiguous(),
              "innergrad fused_cpu: valid must be a contiguous bool tensor");
  check_sizes(valid, {x.size(0), x.size(1)}, "valid");
}

// x (T, B, dx), h0 (B, dh), W_k (n_k, n_{k-1}) with n_0 = dx + dh, b_k (n_k) when given, wo (n_L).
void check_net(at::TensorList W, at::TensorList b, const Tensor& wo, const Tensor& x, const Tensor& h0,
               int64_t act) {
  TORCH_CHECK(!W.empty(), "innergrad fused_cpu: F needs at least one hidden layer");
  TORCH_CHECK(act >= SOFTPLUS && act <= GELU, "innergrad fused_cpu: unknown activation code ", act);
  TORCH_CHECK(x.dim() == 3, "innergrad fused_cpu: x must be (T, B, input_size), got sizes ", x.sizes());
  check_like(x, x, "x");
  check_like(h0, x, "h0");
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == x.size(1), "innergrad fused_cpu: h0 must be (B=", x.size(1),
              ", hidden_size), got sizes ", h0.sizes());
  TORCH_CHECK(b.empty() || b.size() == W.size(), "innergrad fused_cpu: ", W.size(), " weights but ", b.size(),
              " biases");
  int64_t nin = x.size(2) + h0.size(1);
  for (size_t k = 0; k < W.size(); ++k) {
    check_like(W[k], x, "W_k");
    TORCH_CHECK(W[k].dim() == 2 && W[k].size(0) >= 1 && W[k].size(1) == nin, "innergrad fused_cpu: W_", k + 1,
                " must have ", nin, " columns (", k == 0 ? "input_size + hidden_size" : "the width below",
                "), got sizes ", W[k].sizes());
    nin = W[k].size(0);
    if (!b.empty()) {
      check_like(b[k], x, "b_k");
      check_sizes(b[k], {nin}, "b_k");
    }
  }
  check_like(wo, x, "wo");
  check_sizes(wo, {nin}, "wo");
}

// S: L tensors (a or u of each layer), Q: L-1 (the chain products), each (T, B, n_k); empty ones
// are not saved (allowed where `optional`).
void check_saved(at::TensorList S, at::TensorList Q, at::TensorList W, const Tensor& x, bool optional) {
  TORCH_CHECK(S.size() == W.size() && Q.size() + 1 == W.size(), "innergrad fused_cpu: ", W.size(),
              " layers need ", W.size(), " saved activations and ", W.size() - 1, " chain products, got ",
              S.size(), " and ", Q.size());
  for (size_t k = 0; k < W.size(); ++k) {
    check_steps(S[k], x, W[k].size(0), "S_k", optional);
    if (k < Q.size()) check_steps(Q[k], x, W[k].size(0), "Q_k", optional);
  }
}

void fused_forward(at::TensorList S, at::TensorList Q, const Tensor& hs, const Tensor& y, const Tensor& x,
                   const Tensor& h0, const Tensor& valid, at::TensorList W, at::TensorList b, const Tensor& wo,
                   const Tensor& bo, int64_t act, int64_t nblocks) {
  check_net(W, b, wo, x, h0, act);
  TORCH_CHECK(b.size() == W.size(), "innergrad fused_cpu: the forward needs every hidden layer's bias");
  check_saved(S, Q, W, x, true);
  check_steps(hs, x, h0.size(1), "hs", false);
  check_like(y, x, "y");
  check_sizes(y, {x.size(0), x.size(1)}, "y");
  check_valid(valid, x);
  if (bo.numel()) {
    check_like(bo, x, "bo");
    check_sizes(bo, {1}, "bo");
  }
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "innergrad_fused_forward", [&] {
    Net<scalar_t> net(W, b, wo, x.size(2));
    forward_impl<scalar_t>(S, Q, hs, y, x, h0, valid, net, bo.numel() ? bo.data_ptr<scalar_t>() : nullptr, act,
                           nblocks);
  });
}

std::tuple<Tensor, std::vector<Tensor>> fused_backward(at::TensorList S, at::TensorList Q, const Tensor& hs,
                                                       const Tensor& h0, const Tensor& x, const Tensor& valid,
                                                       const Tensor& yb, const Tensor& HB, const Tensor& gx,
                                                       at::TensorList W, const Tensor& wo, int64_t act,
                                                       int64_t nblocks, bool need_params) {
  check_net(W, at::TensorList(), wo, x, h0, act);
  check_saved(S, Q, W, x, false);
  check_steps(hs, x, h0.size(1), "hs", false);
  check_valid(valid, x);
  check_like(yb, x, "yb");
  check_sizes(yb, {x.size(0), x.size(1)}, "yb");
  check_steps(HB, x, h0.size(1), "HB", true);
  check_steps(gx, x, x.size(2), "gx", true);
  std::tuple<Tensor, std::vector<Tensor>> out;
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "innergrad_fused_backward", [&] {
    Net<scalar_t> net(W, at::TensorList(), wo, x.size(2));
    out = backward_impl<scalar_t>(S, Q, hs, h0, x, valid, yb, HB, gx, net, act, nblocks, need_params);
  });
  return out;
}

bool blas_available(bool is_double) { return is_double ? have_blas<double>() : have_blas<float>(); }

}  // namespace

TORCH_LIBRARY(innergrad_cpu, m) {
  m.def(
      "fused_forward(Tensor(a!)[] S, Tensor(b!)[] Q, Tensor(c!) hs, Tensor(d!) y, Tensor x, Tensor h0, "
      "Tensor valid, Tensor[] W, Tensor[] b, Tensor wo, Tensor bo, int act, int nblocks) -> ()",
      &fused_forward);
  m.def(
      "fused_backward(Tensor[] S, Tensor[] Q, Tensor hs, Tensor h0, Tensor x, Tensor valid, Tensor yb, "
      "Tensor HB, Tensor(a!) gx, Tensor[] W, Tensor wo, int act, int nblocks, bool need_params) "
      "-> (Tensor, Tensor[])",
      &fused_backward);
  // Whether gemm() calls BLAS directly (else it goes through ATen: correct, slower).
  m.def("blas_available(bool is_double) -> bool", &blas_available);
}
