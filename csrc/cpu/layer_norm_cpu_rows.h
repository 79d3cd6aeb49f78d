// The row loops of the CPU LayerNorm, written once over "lanes" and compiled
// twice by layer_norm_cpu.cpp: with at::vec (AVX2 on x86) and, on x86, with
// one element at a time for CPUs without AVX2.
//
// No include guard, on purpose: this file is included inside a namespace that
// provides the lanes (vec_helpers.h: Vec<A>, kLanes<A>, load, store,
// first_lanes, reduce_sum) and the parameter structs of layer_norm_cpu.cpp.
// It includes nothing itself.

// The number of independent vector accumulators of the row reductions: the
// adds into one accumulator form a dependency chain; four chains keep the
// floating-point adders busy.
constexpr int kAccumulators = 4;

template <typename A>
struct Accumulators {
  Vec<A> v[kAccumulators] = {Vec<A>(A(0)), Vec<A>(A(0)), Vec<A>(A(0)),
                             Vec<A>(A(0))};

  Vec<A>& operator[](int k) { return v[k]; }

  // The sum of all lanes, in a fixed order (deterministic).
  A sum() const { return reduce_sum<A>((v[0] + v[1]) + (v[2] + v[3])); }
};

// Walks a row of N elements one Vec<A> at a time: calls body(j, n, k) for the
// piece [j, j + n), n == kLanes except for the last piece, k in
// [0, kAccumulators) the accumulator to use. Full vectors go kAccumulators at
// a time; the rest, fewer than kAccumulators vectors, goes into accumulator 0.
// k is a constant at every call once inlined, so the accumulators stay in
// registers.
template <typename A, typename Body>
C10_ALWAYS_INLINE void for_each_vector(int64_t N, const Body& body) {
  constexpr int64_t L = kLanes<A>;
  int64_t j = 0;
  for (; j + kAccumulators * L <= N; j += kAccumulators * L) {
    body(j, L, 0);
    body(j + L, L, 1);
    body(j + 2 * L, L, 2);
    body(j + 3 * L, L, 3);
  }
  for (; j < N; j += L) body(j, std::min(L, N - j), 0);
}

// Asks the cache for row[j], once per 64-byte line (call it for every j the
// row loop visits). Used for the next row while this row's last pass
// computes: the next row's first pass then finds its lines in the cache
// instead of waiting on memory.
template <typename T>
C10_ALWAYS_INLINE void prefetch_line(const T* row, int64_t j) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr int64_t kPerLine = std::max<int64_t>(1, 64 / sizeof(T));
  if (j % kPerLine == 0) __builtin_prefetch(row + j);
#endif
}

// ------------------------------------------------------------------ forward

// One row: exact two-pass statistics, then y = (x - mean) * rstd * w + b.
// Pass 1 sums the row for a first mean m0. Pass 2 sums the deviations
// d = x - m0 and their squares: in exact arithmetic sum(d) is zero; with
// rounding it corrects the mean, mean = m0 + sum(d) / N, and the variance about
// that mean is (sum(d^2) - sum(d)^2 / N) / N (the "corrected two-pass"
// algorithm; never E[x^2] - mean^2). A row of equal values so gets exactly its
// value as mean and a variance of exactly 0. The row is read three times; it
// stays in the L1/L2 cache between the passes; the last one prefetches the
// row next_x (null: none).
template <typename T, typename W, bool kWeight, bool kBias>
FASTLAYERNORM_FLATTEN void forward_row(const ForwardParams<T, W>& p, int64_t r,
                                       const T* next_x) {
  using A = acc_t<T>;
  // Locals, not p's members: the stores to y could alias those for all the
  // compiler knows, and it would reload them in every iteration.
  const int64_t N = p.N;
  const T* x = p.x + r * N;
  T* y = p.y + r * N;
  const W* w = p.w;
  const W* b = p.b;

  Accumulators<A> sum;
  // The lanes of a partial load are zero: they add nothing.
  for_each_vector<A>(N, [&](int64_t j, int64_t n, int k) {
    sum[k] += load(x + j, n);
  });
  const A m0 = sum.sum() / static_cast<A>(N);
  const Vec<A> vm0(m0);

  Accumulators<A> dev, sq;
  for_each_vector<A>(N, [&](int64_t j, int64_t n, int k) {
    const Vec<A> d = first_lanes<A>(load(x + j, n) - vm0, n);
    dev[k] += d;
    sq[k] += d * d;
  });
  const A sum_d = dev.sum();
  const A mean = m0 + sum_d / static_cast<A>(N);
  // max(): rounding may leave a variance of ~0 slightly negative; a NaN (from
  // NaN or inf input) stays NaN.
  const A var = std::max(
      (sq.sum() - sum_d * sum_d / static_cast<A>(N)) / static_cast<A>(N), A(0));
  const A rstd = A(1) / std::sqrt(var + p.eps);
  const Vec<A> vmean(mean), vrstd(rstd);

  for_each_vector<A>(N, [&](int64_t j, int64_t n, int) {
    if (next_x) prefetch_line(next_x, j);
    Vec<A> v = (load(x + j, n) - vmean) * vrstd;
    if constexpr (kWeight) v = v * load(w + j, n);
    if constexpr (kBias) v = v + load(b + j, n);
    store(y + j, v, n);
  });
  p.stats[2 * r] = mean;
  p.stats[2 * r + 1] = rstd;
}

template <typename T, typename W, bool kWeight, bool kBias>
void forward_range(const ForwardParams<T, W>& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* next_x = r + 1 < end ? p.x + (r + 1) * p.N : nullptr;
    forward_row<T, W, kWeight, kBias>(p, r, next_x);
  }
}

// ----------------------------------------------------------------- backward

// x_hat of the piece [j, j + n) of the row x: (x - mean) * rstd, or with
// kFromOutput, where x is the forward's output, (x - bias) / weight.
template <bool kWeight, bool kFromOutput, typename T, typename W, typename V>
inline V x_hat(const T* x, const W* w, const W* b, int64_t j, int64_t n,
               const V& mean, const V& rstd) {
  const V v = load(x + j, n);
  if constexpr (kFromOutput) {
    const V centered = b ? v - load(b + j, n) : v;
    if constexpr (kWeight) {
      return centered / load(w + j, n);
    } else {
      return centered;
    }
  } else {
    return (v - mean) * rstd;
  }
}

// dy * weight (dy without weight).
template <bool kWeight, typename W, typename V>
inline V weighted(const V& dy, const W* w, int64_t j, int64_t n) {
  if constexpr (kWeight) {
    return dy * load(w + j, n);
  } else {
    return dy;
  }
}

// One row. With g = dy * w and x_hat the normalized input:
//   dx = (g - (x_hat * mean(g * x_hat) + mean(g))) * rstd
//   dweight += dy * x_hat,  dbias += dy   (into pdw / pdb, either may be null)
// The first pass reduces the row and adds its dweight/dbias terms; the
// second (dx only) reads the row again, from the cache. The last pass
// prefetches next_dy / next_x (null: none).
template <typename T, typename W, bool kWeight, bool kFromOutput>
FASTLAYERNORM_FLATTEN void backward_row(const BackwardParams<T, W>& p, int64_t r,
                                        acc_t<T>* pdw, acc_t<T>* pdb,
                                        const T* next_dy, const T* next_x) {
  using A = acc_t<T>;
  // Locals, not p's members (see forward_row).
  const int64_t N = p.N;
  const T* dy = p.dy + r * N;
  const T* x = p.x + r * N;
  T* dx = p.dx ? p.dx + r * N : nullptr;
  const W* w = p.w;
  const W* b = p.b;
  const Vec<A> mean(kFromOutput ? A(0) : p.stats[2 * r]);
  const Vec<A> rstd(p.stats[2 * r + 1]);
  auto prefetch_next = [&](int64_t j) {
    if (next_dy) {
      prefetch_line(next_dy, j);
      prefetch_line(next_x, j);
    }
  };

  Accumulators<A> sum_g, sum_gx;
  for_each_vector<A>(N, [&](int64_t j, int64_t n, int k) {
    if (!dx) prefetch_next(j);
    const Vec<A> dyv = load(dy + j, n);
    const Vec<A> xh = x_hat<kWeight, kFromOutput>(x, w, b, j, n, mean, rstd);
    const Vec<A> g = weighted<kWeight>(dyv, w, j, n);
    sum_g[k] += g;  // zero past n, as dy
    // Masked: with kFromOutput an unused lane of x_hat is 0/0.
    sum_gx[k] += first_lanes<A>(g * xh, n);
    if (pdw) store(pdw + j, load(pdw + j, n) + dyv * xh, n);
    if (pdb) store(pdb + j, load(pdb + j, n) + dyv, n);
  });
  if (!dx) return;

  const Vec<A> c1(sum_gx.sum() / static_cast<A>(N));
  const Vec<A> c2(sum_g.sum() / static_cast<A>(N));
  for_each_vector<A>(N, [&](int64_t j, int64_t n, int) {
    prefetch_next(j);
    const Vec<A> xh = x_hat<kWeight, kFromOutput>(x, w, b, j, n, mean, rstd);
    const Vec<A> g = weighted<kWeight>(load(dy + j, n), w, j, n);
    store(dx + j, (g - (xh * c1 + c2)) * rstd, n);
  });
}

// Chunks [begin, end) of rows. Chunk c owns rows
// [c * rows / chunks, (c + 1) * rows / chunks) and the partial sums
// [c * N, (c + 1) * N) of partial_dw / partial_db.
template <typename T, typename W, bool kWeight, bool kFromOutput>
void backward_range(const BackwardParams<T, W>& p, int64_t begin, int64_t end) {
  for (int64_t c = begin; c < end; ++c) {
    acc_t<T>* pdw = p.partial_dw ? p.partial_dw + c * p.N : nullptr;
    acc_t<T>* pdb = p.partial_db ? p.partial_db + c * p.N : nullptr;
    const int64_t r_end = (c + 1) * p.rows / p.chunks;
    for (int64_t r = c * p.rows / p.chunks; r < r_end; ++r) {
      const bool next = r + 1 < r_end;
      backward_row<T, W, kWeight, kFromOutput>(
          p, r, pdw, pdb, next ? p.dy + (r + 1) * p.N : nullptr,
          next ? p.x + (r + 1) * p.N : nullptr);
    }
  }
}

// Columns [begin, end) of dweight or dbias: the chunks' partial sums added in
// chunk order, then rounded once to W.
template <typename A, typename W>
FASTLAYERNORM_FLATTEN void combine_range(const CombineParams<A, W>& p,
                                         int64_t begin, int64_t end) {
  for_each_vector<A>(end - begin, [&](int64_t j, int64_t n, int) {
    j += begin;
    Vec<A> s = load(p.partial + j, n);
    for (int64_t c = 1; c < p.chunks; ++c) {
      s = s + load(p.partial + c * p.N + j, n);
    }
    store(p.out + j, s, n);
  });
}
