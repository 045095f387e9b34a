// The row kernels: included by scan_kernel.h inside its instruction set's namespace, where V,
// W and the vector helpers are defined. Used when N is a multiple of W (N = 16 and 64 with
// 8 lanes), where they are faster than the lane kernels of scan_kernel.h.
//
// Layout: a vector holds W consecutive states of one channel, so a channel's whole state stays
// in registers (N / W vectors), B[t] and C[t] are vector loads from copies of B and C with the
// state innermost ((batch, G, L, N), made by the caller), and dt, u and the output are plain
// rows of the channel: the per-token inputs are vectorised over tokens and need no transposes.
// The sums over states (the output, and two sums per token in the backward) are kept as W
// partial sums per token and reduced W tokens at a time (reduce_rows).

// out[t] = the sum of the W lanes of rows[t * W .. t * W + W) for t < T, T a multiple of W.
void reduce_rows(const float *rows, float *out, int64_t T) {
  for (int64_t t = 0; t < T; t += W) reduce_lanes(rows + t * W, W, out + t);
}

// dst[0 .. n) = src[0 .. n), dst[n .. kChunk) = 0.
void load_row(float *dst, const float *src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  for (int64_t i = n; i < kChunk; ++i) dst[i] = 0.0f;
}

// dt[0 .. T) = delta of channel c from its low-rank factors (FwdArgs: dlow, dproj), summed in
// order of r as lowrank_delta_tile; dt[T .. kChunk) = 0.
void lowrank_delta_row(float *dt, const FwdArgs &a, int64_t b, int64_t c, int64_t t0, int64_t T) {
  for (int64_t t = 0; t < kChunk; ++t) dt[t] = 0.0f;
  const float *low = a.dlow + b * a.dlow_sb + (c / a.dlow_block) * a.dlow_sk + t0;
  const int64_t full = T - T % W;
  for (int64_t r = 0; r < a.rank; ++r) {
    const float p = a.dproj[c * a.rank + r];
    const V pv = vset(p);
    const float *lr = low + r * a.dlow_sr;
    for (int64_t t = 0; t < full; t += W) vstore(dt + t, vload(dt + t) + pv * vload(lr + t));
    for (int64_t t = full; t < T; ++t) dt[t] += p * lr[t];
  }
}

void zero_rows(float *rows, int64_t from, int64_t to) {
  for (int64_t i = from * W; i < to * W; ++i) rows[i] = 0.0f;
}

int64_t round_up(int64_t n) { return (n + W - 1) / W * W; }

// A compile-time flag passed by value to generic lambdas.
template <bool B>
struct Flag {
  static constexpr bool value = B;
};

// The chunk's dt = softplus(delta + bias) (or delta + bias) into dt, dt * u into du and, when
// grad != nullptr, the activation's derivative into grad; all padded to kChunk with zeros
// beyond T in u (so du = 0 there).
void row_delta(float *dt, float *du, float *grad, const float *u, float bias, bool softplus) {
  activate_delta(dt, grad, vset(bias), softplus, kChunk / W);  // the row as kChunk / W vectors
  for (int64_t t = 0; t < kChunk; t += W) vstore(du + t, vload(dt + t) * vload(u + t));
}

// One token of one channel: the N / W state vectors h advance by one token; returns the W
// partial sums of y = sum_n C[n] h[n]. Decays and new states go to decay_out / h_out when
// they are not nullptr.
// CLAMP = false when every dt A2 of the chunk is known to lie in [kMinExp2, kMaxExp2]
// (exp2_args_in_range); Y = false skips y (returns zeros).
template <int NVS, bool CLAMP, bool Y = true>
VSSM_INLINE V row_token(int64_t NV, V *h, const V *A2, float dt, float du, const float *Bt,
                        const float *Ct, float *decay_out, float *h_out) {
  const V dtv = vset(dt), duv = vset(du);
  V y0 = V{}, y1 = V{};
  for (int64_t j = 0; j < (NVS > 0 ? NVS : NV); ++j) {
    const V decay = CLAMP ? vclamp_exp2(dtv * A2[j]) : exp2_in_range(dtv * A2[j]);
    h[j] = decay * h[j] + duv * vload(Bt + j * W);
    if (decay_out != nullptr) vstore(decay_out + j * W, decay);
    if (h_out != nullptr) vstore(h_out + j * W, h[j]);
    if (!Y) continue;
    if (j % 2 == 0) {
      y0 += h[j] * vload(Ct + j * W);
    } else {
      y1 += h[j] * vload(Ct + j * W);
    }
  }
  return y0 + y1;
}

// Whether |dt[t] A2[n]| <= kMaxExp2 (= -kMinExp2) for every t < kChunk and n: then the scan
// needs no clamp (the usual case: it fails only for decays below 2^-126). max_abs_A2 is the
// largest |A2[n]| of the channel; NaNs give false.
bool exp2_args_in_range(const float *dt, float max_abs_A2) {
  V m = V{};
  for (int64_t t = 0; t < kChunk; t += W) m = vmax(m, vabs(vload(dt + t)));
  float largest = 0.0f;
  for (int l = 0; l < W; ++l) largest = largest > m[l] ? largest : m[l];
  return largest * max_abs_A2 <= kMaxExp2;
}

float max_abs(const float *x, int64_t n, float scale) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = (x[i] < 0.0f ? -x[i] : x[i]) * scale;
    m = a > m || a != a ? a : m;  // a NaN stays
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Forward: one unit is one (batch, channel) row, all tokens.
// ---------------------------------------------------------------------------------------------
int64_t fwd_row_scratch(const ScanShape &) { return 5 * kChunk + kChunk * W; }

template <int NS>
void fwd_row_impl(const FwdArgs &a, int64_t unit, float *scratch) {
  const ScanShape &s = a.s;
  constexpr int NVS = NS / W;
  const int64_t N = NS > 0 ? NS : s.dstate, NV = N / W, L = s.length;
  const int64_t b = unit / s.dim, c = unit % s.dim, g = c / s.per_group, dd = c / s.ratio;
  float *dt = scratch, *du = dt + kChunk, *uu = du + kChunk, *yy = uu + kChunk,
        *zz = yy + kChunk, *partial = zz + kChunk;
  V A2[NVS > 0 ? NVS : kMaxDState / W], h[NVS > 0 ? NVS : kMaxDState / W];
  for (int64_t j = 0; j < NV; ++j) {
    A2[j] = vload(a.A + c * N + j * W) * kLog2e;
    h[j] = V{};
  }
  const float max_abs_A2 = max_abs(a.A + c * N, N, kLog2e);
  const float bias = a.bias != nullptr ? a.bias[dd] : 0.0f;
  const V Dv = vset(a.D != nullptr ? a.D[c] : 0.0f);
  const float *Bt = a.Bt + (b * s.groups + g) * L * N, *Ct = a.Ct + (b * s.groups + g) * L * N;
  const int64_t row = (b * s.dim + c) * L;
  const float *delta_row = a.dlow == nullptr ? a.delta + (b * s.dim_delta + dd) * L : nullptr;
  float *states = a.states + (b * s.dim + c) * s.n_chunks * N;
  for (int64_t k = 0; k < s.n_chunks; ++k) {
    const int64_t t0 = k * kChunk, T = imin(kChunk, L - t0), TW = round_up(T);
    if (a.dlow != nullptr) {
      lowrank_delta_row(dt, a, b, c, t0, T);
    } else {
      load_row(dt, delta_row + t0, T);
    }
    load_row(uu, a.u + row + t0, T);
    row_delta(dt, du, nullptr, uu, bias, a.softplus);
    auto scan = [&](auto clamp) {
      for (int64_t t = 0; t < T; ++t)
        vstore(partial + t * W,
               row_token<NVS, decltype(clamp)::value>(NV, h, A2, dt[t], du[t], Bt + (t0 + t) * N,
                                                      Ct + (t0 + t) * N, nullptr, nullptr));
    };
    if (exp2_args_in_range(dt, max_abs_A2)) {
      scan(Flag<false>{});
    } else {
      scan(Flag<true>{});
    }
    zero_rows(partial, T, TW);
    reduce_rows(partial, yy, TW);
    if (a.z != nullptr) load_row(zz, a.z + row + t0, T);
    for (int64_t t = 0; t < TW; t += W) {
      V y = vload(yy + t) + Dv * vload(uu + t);
      if (a.z != nullptr) {
        const V zv = vload(zz + t);
        y = y * zv * vsigmoid(zv);
      }
      vstore(yy + t, y);
    }
    for (int64_t t = 0; t < T; ++t) a.out[row + t0 + t] = yy[t];
    for (int64_t j = 0; j < NV; ++j) vstore(states + k * N + j * W, h[j]);
  }
}

void fwd_row(const FwdArgs &a, int64_t unit, float *scratch) {
  switch (a.s.dstate / W) {
    case 1: return fwd_row_impl<W>(a, unit, scratch);
    case 2: return fwd_row_impl<2 * W>(a, unit, scratch);
    default: return fwd_row_impl<0>(a, unit, scratch);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: one unit is (batch, group, a block of rows_per_unit channels), all tokens, so that
// dB and dC of a chunk are summed over the unit's channels before they are stored. dB_part and
// dC_part are (n_sub, batch, G, L, N) here: the state innermost.
// ---------------------------------------------------------------------------------------------
constexpr int kRowTokenBuffers = 13;

int64_t bwd_row_scratch(const ScanShape &s, int64_t rows_per_unit) {
  const int64_t N = s.dstate, K = kChunk;
  return rows_per_unit * (2 * N + 2 * W) + (K + 1) * N + 3 * K * N + kRowTokenBuffers * K +
         3 * K * W;
}

template <int NS>
void bwd_row_impl(const BwdArgs &a, int64_t unit, float *scratch) {
  const ScanShape &s = a.s;
  constexpr int NVS = NS / W;
  const int64_t N = NS > 0 ? NS : s.dstate, NV = N / W, L = s.length, K = kChunk;
  const int64_t sub = unit % a.n_sub, bg = unit / a.n_sub, b = bg / s.groups, g = bg % s.groups;
  const int64_t c_begin = g * s.per_group + sub * a.vectors_per_unit;
  const int64_t nc = imin((g + 1) * s.per_group, c_begin + a.vectors_per_unit) - c_begin;
  // Per channel of the unit, carried over chunks: the adjoint, dA, and W-lane sums of dD, dbias.
  float *lam = scratch, *dA = lam + nc * N, *dDw = dA + nc * N, *dbw = dDw + nc * W;
  // Per chunk.
  float *H = dbw + nc * W;  // (K + 1, N): H[0] the state before the chunk, H[t + 1] after t
  float *decay = H + (K + 1) * N, *dBacc = decay + K * N, *dCacc = dBacc + K * N;
  float *dt = dCacc + K * N, *sg = dt + K, *uu = sg + K, *du = uu + K, *go = du + K,
        *dy = go + K, *zz = dy + K, *zs = zz + K, *yy = zs + K, *sB = yy + K, *sA = sB + K,
        *ddt = sA + K, *dut = ddt + K;
  float *partB = dut + K, *partA = partB + K * W, *partY = partA + K * W;

  const float *Bt = a.Bt + (b * s.groups + g) * L * N, *Ct = a.Ct + (b * s.groups + g) * L * N;
  for (int64_t ci = 0; ci < nc; ++ci) {
    const int64_t c = c_begin + ci;
    for (int64_t n = 0; n < N; ++n) {
      lam[ci * N + n] = a.dlast != nullptr ? a.dlast[(b * s.dim + c) * N + n] : 0.0f;
      dA[ci * N + n] = 0.0f;
    }
    vstore(dDw + ci * W, V{});
    vstore(dbw + ci * W, V{});
  }
  V A2[NVS > 0 ? NVS : kMaxDState / W], Av[NVS > 0 ? NVS : kMaxDState / W];
  V h[NVS > 0 ? NVS : kMaxDState / W], carry[NVS > 0 ? NVS : kMaxDState / W];
  V dAc[NVS > 0 ? NVS : kMaxDState / W];

  for (int64_t k = s.n_chunks - 1; k >= 0; --k) {
    const int64_t t0 = k * K, T = imin(K, L - t0), TW = round_up(T);
    const float *Bk = Bt + t0 * N, *Ck = Ct + t0 * N;
    for (int64_t i = 0; i < T * N; ++i) dBacc[i] = dCacc[i] = 0.0f;
    for (int64_t ci = 0; ci < nc; ++ci) {
      const int64_t c = c_begin + ci, dd = c / s.ratio, row = (b * s.dim + c) * L;
      if (ci + 1 < nc) {
        // The next channel's rows of this chunk: many short streams, which the hardware
        // prefetchers do not follow.
        const int64_t next = row + L;
        for (int64_t t = 0; t < T; t += 16) {
          __builtin_prefetch(a.u + next + t0 + t);
          __builtin_prefetch(a.dout + next + t0 + t);
          __builtin_prefetch(a.delta + (b * s.dim_delta + (c + 1) / s.ratio) * L + t0 + t);
          if (a.z != nullptr) __builtin_prefetch(a.z + next + t0 + t);
          __builtin_prefetch(a.du + next + t0 + t, 1);
          __builtin_prefetch(a.ddelta_ch + next + t0 + t, 1);
        }
      }
      for (int64_t j = 0; j < NV; ++j) {
        Av[j] = vload(a.A + c * N + j * W);
        A2[j] = Av[j] * kLog2e;
      }
      const float Dc = a.D != nullptr ? a.D[c] : 0.0f;
      load_row(dt, a.delta + (b * s.dim_delta + dd) * L + t0, T);
      load_row(uu, a.u + row + t0, T);
      row_delta(dt, du, sg, uu, a.bias != nullptr ? a.bias[dd] : 0.0f, a.softplus);
      load_row(go, a.dout + row + t0, T);
      if (a.z != nullptr) {
        load_row(zz, a.z + row + t0, T);
        for (int64_t t = 0; t < K; t += W) {
          const V zv = vload(zz + t), sig = vsigmoid(zv);
          vstore(zs + t, sig);
          vstore(dy + t, vload(go + t) * zv * sig);
        }
      } else {
        for (int64_t t = 0; t < K; ++t) dy[t] = go[t];
      }
      // The states of the chunk, from the state saved after the previous chunk.
      const float *saved = k > 0 ? a.states + ((b * s.dim + c) * s.n_chunks + k - 1) * N : nullptr;
      for (int64_t j = 0; j < NV; ++j) {
        h[j] = saved != nullptr ? vload(saved + j * W) : V{};
        vstore(H + j * W, h[j]);
      }
      // y (before the gate) is needed for dz only. One loop per case: the branches stay out
      // of the token loop.
      auto recompute = [&](auto clamp, auto with_y) {
        for (int64_t t = 0; t < T; ++t) {
          const V y = row_token<NVS, decltype(clamp)::value, decltype(with_y)::value>(
              NV, h, A2, dt[t], du[t], Bk + t * N, Ck + t * N, decay + t * N, H + (t + 1) * N);
          if (decltype(with_y)::value) vstore(partY + t * W, y);
        }
      };
      const bool in_range = exp2_args_in_range(dt, max_abs(a.A + c * N, N, kLog2e));
      if (in_range && a.z == nullptr) recompute(Flag<false>{}, Flag<false>{});
      if (in_range && a.z != nullptr) recompute(Flag<false>{}, Flag<true>{});
      if (!in_range && a.z == nullptr) recompute(Flag<true>{}, Flag<false>{});
      if (!in_range && a.z != nullptr) recompute(Flag<true>{}, Flag<true>{});
      // The adjoint lam[t] = C[t] dy[t] + decay[t + 1] lam[t + 1], carried as decay * lam.
      for (int64_t j = 0; j < NV; ++j) {
        carry[j] = vload(lam + ci * N + j * W);
        dAc[j] = V{};
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const V dtv = vset(dt[t]), duv = vset(du[t]), dyv = vset(dy[t]);
        const float *Bn = Bk + t * N, *Cn = Ck + t * N, *hp = H + t * N, *hn = hp + N,
                    *dc = decay + t * N;
        float *dBt = dBacc + t * N, *dCt = dCacc + t * N;
        V lamB = V{}, ddA = V{};
        for (int64_t j = 0; j < (NVS > 0 ? NVS : NV); ++j) {
          const V an = vload(dc + j * W);
          const V lm = carry[j] + dyv * vload(Cn + j * W);
          vstore(dCt + j * W, vload(dCt + j * W) + dyv * vload(hn + j * W));
          vstore(dBt + j * W, vload(dBt + j * W) + lm * duv);
          lamB += lm * vload(Bn + j * W);
          carry[j] = an * lm;
          const V la = carry[j] * vload(hp + j * W);  // lam decay h[t - 1]
          ddA += la * Av[j];
          dAc[j] += la * dtv;
        }
        vstore(partB + t * W, lamB);
        vstore(partA + t * W, ddA);
      }
      for (int64_t j = 0; j < NV; ++j) {
        vstore(lam + ci * N + j * W, carry[j]);
        vstore(dA + ci * N + j * W, vload(dA + ci * N + j * W) + dAc[j]);
      }
      zero_rows(partB, T, TW);
      zero_rows(partA, T, TW);
      reduce_rows(partB, sB, TW);
      reduce_rows(partA, sA, TW);
      if (a.z != nullptr) {
        zero_rows(partY, T, TW);
        reduce_rows(partY, yy, TW);
      }
      // Per-token gradients, vectorised over tokens (zero beyond T: u, dout and the sums are).
      V dDv = V{}, dbv = V{};
      const V Dv = vset(Dc);
      for (int64_t t = 0; t < TW; t += W) {
        const V uv = vload(uu + t), lamBv = vload(sB + t), dyv = vload(dy + t);
        V ddtv = vload(sA + t) + uv * lamBv;
        if (a.softplus) ddtv *= vload(sg + t);
        dbv += ddtv;
        dDv += dyv * uv;
        vstore(ddt + t, ddtv);
        vstore(dut + t, vload(dt + t) * lamBv + Dv * dyv);
        if (a.z != nullptr) {
          // d/dz [y z sigmoid(z)] = y sigmoid(z) (1 + z (1 - sigmoid(z))), y before the gate
          const V zv = vload(zz + t), sig = vload(zs + t), y = vload(yy + t) + Dv * uv;
          vstore(zz + t, vload(go + t) * y * sig * (1.0f + zv * (1.0f - sig)));
        }
      }
      vstore(dDw + ci * W, vload(dDw + ci * W) + dDv);
      vstore(dbw + ci * W, vload(dbw + ci * W) + dbv);
      for (int64_t t = 0; t < T; ++t) {
        a.du[row + t0 + t] = dut[t];
        a.ddelta_ch[row + t0 + t] = ddt[t];
      }
      if (a.z != nullptr)
        for (int64_t t = 0; t < T; ++t) a.dz[row + t0 + t] = zz[t];
    }
    // dB, dC of the chunk summed over the unit's channels: T consecutive (L, N) rows.
    float *dBg = a.dB_part + (((sub * s.batch + b) * s.groups + g) * L + t0) * N;
    float *dCg = a.dC_part + (((sub * s.batch + b) * s.groups + g) * L + t0) * N;
    for (int64_t i = 0; i < T * N; ++i) {
      dBg[i] = dBacc[i];
      dCg[i] = dCacc[i];
    }
  }
  for (int64_t ci = 0; ci < nc; ++ci) {
    const int64_t c = b * s.dim + c_begin + ci;
    for (int64_t n = 0; n < N; ++n) a.dA_part[c * N + n] = dA[ci * N + n];
    a.dD_part[c] = hsum(vload(dDw + ci * W));
    a.dbias_part[c] = hsum(vload(dbw + ci * W));
  }
}

void bwd_row(const BwdArgs &a, int64_t unit, float *scratch) {
  switch (a.s.dstate / W) {
    case 1: return bwd_row_impl<W>(a, unit, scratch);
    case 2: return bwd_row_impl<2 * W>(a, unit, scratch);
    default: return bwd_row_impl<0>(a, unit, scratch);
  }
}
