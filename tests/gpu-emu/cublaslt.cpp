// Emulated cuBLASLt for running the CUDA backend's host code on a CPU.
//
// Build: g++ -O2 -std=c++17 -shared -fPIC -o libcublasLt.so tests/gpu-emu/cublaslt.cpp
//
// cudarc (feature dynamic-loading) dlopens libcublasLt.so and resolves each symbol lazily, on its
// first call. This file exports the cuBLASLt C API functions that src/backend/cuda/gemm.rs reaches
// through cudarc::cublaslt::result (nothing from libcublas is used):
//   cublasLtCreate, cublasLtDestroy,
//   cublasLtMatmulDescCreate, cublasLtMatmulDescDestroy, cublasLtMatmulDescSetAttribute,
//   cublasLtMatrixLayoutCreate, cublasLtMatrixLayoutDestroy, cublasLtMatrixLayoutSetAttribute,
//   cublasLtMatmulPreferenceCreate, cublasLtMatmulPreferenceDestroy,
//   cublasLtMatmulPreferenceSetAttribute, cublasLtMatmulAlgoGetHeuristic, cublasLtMatmul,
//   and cublasLtGetVersion (`lowrank doctor`).
// Enum values and struct layouts follow cudarc 0.19's sys bindings (feature cuda-13000).
//
// Semantics follow real cuBLASLt: column-major storage, D = alpha·op(A)·op(B) + beta·C with
// COMPUTE_32F / scale 32F and host alpha/beta; C is not read when beta == 0, A and B are not read
// when alpha == 0 (BLAS convention). Dot products accumulate in double and the epilogue rounds once
// to D's type (bf16: round to nearest even, NaN stays NaN). "Device" pointers are host pointers
// (the emulated driver's memory is host memory) and the work runs synchronously, ignoring the
// stream. Anything a real cuBLASLt would reject is rejected here too, with a message on stderr
// prefixed "emulated cuBLASLt:"; anything this emulator does not implement is NOT_SUPPORTED, loudly.
//
// EMU_CUBLASLT_THREADS=N caps the worker threads (default: all hardware threads).
// EMU_CUBLASLT_NO_EPILOGUE=1 makes the heuristic find no algorithm for any epilogue but the
// default, as a cuBLASLt without kernels for some epilogue would (the caller's fallback path).
//
// This file checks each call and exports the API; cublaslt_objects.h holds the ABI and the objects'
// registry, cublaslt_matmul.h the arithmetic.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#pragma GCC visibility push(hidden)

#include "cublaslt_matmul.h"   // Problem and the arithmetic
#include "cublaslt_objects.h"  // the ABI, messages and the objects' registry

namespace {

// ---- the problem, checked --------------------------------------------------------------------

std::string shape(const LayoutObj& l) {
    char buf[160];
    snprintf(buf, sizeof buf, "%llux%llu ld %lld %s", (unsigned long long)l.rows,
             (unsigned long long)l.cols, (long long)l.ld, type_name(l.type));
    return buf;
}

// The checks shared by the heuristic and the matmul; fills `p` on success.
Status check_problem(const char* fn, const DescObj& d, const LayoutObj& a, const LayoutObj& b,
                     const LayoutObj& c, const LayoutObj& dd, Problem* p) {
    if (d.compute != COMPUTE_32F && d.compute != COMPUTE_32F_PEDANTIC) {
        complain("%s: compute type %u is not emulated (only CUBLAS_COMPUTE_32F)", fn, d.compute);
        return NOT_SUPPORTED;
    }
    if (d.scale != CUDA_R_32F) {
        complain("%s: scale type %s is not supported with CUBLAS_COMPUTE_32F (needs CUDA_R_32F)",
                 fn, type_name(d.scale));
        return NOT_SUPPORTED;
    }
    // Types: with COMPUTE_32F / scale 32F cuBLASLt takes A/B 16BF -> C/D 16BF or 32F, and A/B 32F
    // -> C/D 32F (16F is real but not emulated). A and B, C and D must share their type.
    if (a.type != b.type) {
        complain("%s: A is %s but B is %s; they must have the same type", fn, type_name(a.type),
                 type_name(b.type));
        return NOT_SUPPORTED;
    }
    if (c.type != dd.type) {
        complain("%s: C is %s but D is %s; they must have the same type", fn, type_name(c.type),
                 type_name(dd.type));
        return NOT_SUPPORTED;
    }
    bool types_ok = (a.type == CUDA_R_16BF && (c.type == CUDA_R_16BF || c.type == CUDA_R_32F)) ||
                    (a.type == CUDA_R_32F && c.type == CUDA_R_32F);
    if (!types_ok) {
        complain("%s: A/B %s with C/D %s is not a supported combination for CUBLAS_COMPUTE_32F "
                 "(supported here: 16BF->16BF, 16BF->32F, 32F->32F)",
                 fn, type_name(a.type), type_name(c.type));
        return NOT_SUPPORTED;
    }

    const bool ta = d.transa != OP_N, tb = d.transb != OP_N;
    const uint64_t m = dd.rows, n = dd.cols;
    const uint64_t a_m = ta ? a.cols : a.rows, k = ta ? a.rows : a.cols;
    const uint64_t b_k = tb ? b.cols : b.rows, b_n = tb ? b.rows : b.cols;
    if (c.rows != m || c.cols != n || a_m != m || b_k != k || b_n != n) {
        complain("%s: shapes do not agree: op(A) %llux%llu (A %s, trans%c), op(B) %llux%llu "
                 "(B %s, trans%c), C %s, D %s; need op(A) m x k, op(B) k x n, C and D m x n",
                 fn, (unsigned long long)a_m, (unsigned long long)k, shape(a).c_str(),
                 ta ? 'T' : 'N', (unsigned long long)b_k, (unsigned long long)b_n,
                 shape(b).c_str(), tb ? 'T' : 'N', shape(c).c_str(), shape(dd).c_str());
        return INVALID_VALUE;
    }
    const LayoutObj* ls[4] = {&a, &b, &c, &dd};
    const char names[4] = {'A', 'B', 'C', 'D'};
    for (int i = 0; i < 4; i++) {
        const LayoutObj& l = *ls[i];
        if (l.order != ORDER_COL) {
            complain("%s: %c has order %d; only CUBLASLT_ORDER_COL is emulated", fn, names[i],
                     l.order);
            return NOT_SUPPORTED;
        }
        if (l.ld < 1 || uint64_t(l.ld) < l.rows) {
            complain("%s: %c (%s) has ld %lld smaller than its %llu rows (or < 1)", fn, names[i],
                     shape(l).c_str(), (long long)l.ld, (unsigned long long)l.rows);
            return INVALID_VALUE;
        }
        if (l.rows > uint64_t(INT64_MAX / 2) || l.cols > uint64_t(INT64_MAX / 2)) {
            complain("%s: %c (%s) is absurdly large", fn, names[i], shape(l).c_str());
            return INVALID_VALUE;
        }
    }
    for (int i = 0; i < 4; i++) {
        if (ls[i]->batch < 1) {
            complain("%s: %c has batch count %d (< 1)", fn, names[i], ls[i]->batch);
            return INVALID_VALUE;
        }
    }
    if (a.batch != b.batch || a.batch != c.batch || a.batch != dd.batch) {
        complain("%s: batch counts differ: A %d, B %d, C %d, D %d (they must all be equal)", fn,
                 a.batch, b.batch, c.batch, dd.batch);
        return INVALID_VALUE;
    }
    if (k == 0) {
        complain("%s: k = 0 (op(A) is %llux0) is not supported", fn, (unsigned long long)m);
        return NOT_SUPPORTED;
    }
    p->m = int64_t(m);
    p->n = int64_t(n);
    p->k = int64_t(k);
    p->batch = a.batch;
    p->ta = ta;
    p->tb = tb;
    p->ab_type = a.type;
    p->cd_type = c.type;
    p->lda = a.ld;
    p->ldb = b.ld;
    p->ldc = c.ld;
    p->ldd = dd.ld;
    p->sa = a.stride;
    p->sb = b.stride;
    p->sc = c.stride;
    p->sd = dd.stride;
    return SUCCESS;
}

bool aligned(const void* ptr, size_t bytes) { return (uintptr_t(ptr) % bytes) == 0; }

}  // namespace

#pragma GCC visibility pop

// ---- the exported C API ------------------------------------------------------------------------

#define EXPORT extern "C" __attribute__((visibility("default")))

// The version whose ABI this file follows (cudarc's cuda-13000 bindings): 13.0.0, as
// major · 10000 + minor · 100 + patch.
EXPORT size_t cublasLtGetVersion() { return 130000; }

EXPORT uint32_t cublasLtCreate(void** handle) {
    return create(handle, Kind::Handle, "cublasLtCreate", HandleObj{});
}

EXPORT uint32_t cublasLtDestroy(void* handle) {
    if (handle == nullptr) {
        complain("cublasLtDestroy: handle is NULL");
        return NOT_INITIALIZED;
    }
    return destroy<HandleObj>(handle, Kind::Handle, "cublasLtDestroy");
}

EXPORT uint32_t cublasLtMatmulDescCreate(void** desc, uint32_t compute_type, uint32_t scale_type) {
    DescObj d;
    d.compute = compute_type;
    d.scale = scale_type;
    return create(desc, Kind::Desc, "cublasLtMatmulDescCreate", d);
}

EXPORT uint32_t cublasLtMatmulDescDestroy(void* desc) {
    return destroy<DescObj>(desc, Kind::Desc, "cublasLtMatmulDescDestroy");
}

EXPORT uint32_t cublasLtMatmulDescSetAttribute(void* desc, uint32_t attr, const void* buf,
                                               size_t size) {
    const char* fn = "cublasLtMatmulDescSetAttribute";
    if (!live(desc, Kind::Desc, fn, "matmulDesc")) return INVALID_VALUE;
    DescObj& d = *static_cast<DescObj*>(desc);
    switch (attr) {
        case DESC_COMPUTE_TYPE: {
            int32_t v;
            if (!read_attr(buf, size, &v, fn, "COMPUTE_TYPE")) return INVALID_VALUE;
            d.compute = uint32_t(v);
            return SUCCESS;
        }
        case DESC_SCALE_TYPE: {
            int32_t v;
            if (!read_attr(buf, size, &v, fn, "SCALE_TYPE")) return INVALID_VALUE;
            d.scale = uint32_t(v);
            return SUCCESS;
        }
        case DESC_POINTER_MODE: {
            int32_t v;
            if (!read_attr(buf, size, &v, fn, "POINTER_MODE")) return INVALID_VALUE;
            if (v != POINTER_MODE_HOST) {
                complain("%s: POINTER_MODE %d is not emulated (only CUBLASLT_POINTER_MODE_HOST)",
                         fn, v);
                return NOT_SUPPORTED;
            }
            d.pointer_mode = v;
            return SUCCESS;
        }
        case DESC_TRANSA:
        case DESC_TRANSB: {
            const char* name = attr == DESC_TRANSA ? "TRANSA" : "TRANSB";
            int32_t v;
            if (!read_attr(buf, size, &v, fn, name)) return INVALID_VALUE;
            if (v != OP_N && v != OP_T && v != OP_C) {
                complain("%s(%s): %d is not a cublasOperation_t (N = 0, T = 1, C = 2)", fn, name,
                         v);
                return INVALID_VALUE;
            }
            (attr == DESC_TRANSA ? d.transa : d.transb) = v == OP_C ? OP_T : v;
            return SUCCESS;
        }
        case DESC_TRANSC: {
            int32_t v;
            if (!read_attr(buf, size, &v, fn, "TRANSC")) return INVALID_VALUE;
            if (v != OP_N) {
                complain("%s: TRANSC must be CUBLAS_OP_N (got %d)", fn, v);
                return NOT_SUPPORTED;
            }
            return SUCCESS;
        }
        case DESC_EPILOGUE: {
            uint32_t v;
            if (!read_attr(buf, size, &v, fn, "EPILOGUE")) return INVALID_VALUE;
            if (v != EPILOGUE_DEFAULT && v != EPILOGUE_BIAS && v != EPILOGUE_GELU_AUX_BIAS && v != EPILOGUE_DGELU &&
                v != EPILOGUE_BGRADA) {
                complain("%s: EPILOGUE %u is not emulated (only CUBLASLT_EPILOGUE_DEFAULT, _BIAS, _GELU_AUX_BIAS, _DGELU "
                         "and _BGRADA)",
                         fn, v);
                return NOT_SUPPORTED;
            }
            d.epilogue = v;
            return SUCCESS;
        }
        case DESC_BIAS_POINTER: {
            const void* v;
            if (!read_attr(buf, size, &v, fn, "BIAS_POINTER")) return INVALID_VALUE;
            d.bias = v;
            return SUCCESS;
        }
        case DESC_EPILOGUE_AUX_POINTER: {
            void* v;
            if (!read_attr(buf, size, &v, fn, "EPILOGUE_AUX_POINTER")) return INVALID_VALUE;
            d.aux = v;
            return SUCCESS;
        }
        case DESC_EPILOGUE_AUX_LD: {
            int64_t v;
            if (!read_attr(buf, size, &v, fn, "EPILOGUE_AUX_LD")) return INVALID_VALUE;
            d.aux_ld = v;
            return SUCCESS;
        }
        default:
            complain("%s: matmul descriptor attribute %u is not emulated", fn, attr);
            return NOT_SUPPORTED;
    }
}

EXPORT uint32_t cublasLtMatrixLayoutCreate(void** layout, uint32_t type, uint64_t rows,
                                           uint64_t cols, int64_t ld) {
    LayoutObj l;
    l.type = type;
    l.rows = rows;
    l.cols = cols;
    l.ld = ld;
    return create(layout, Kind::Layout, "cublasLtMatrixLayoutCreate", l);
}

EXPORT uint32_t cublasLtMatrixLayoutDestroy(void* layout) {
    return destroy<LayoutObj>(layout, Kind::Layout, "cublasLtMatrixLayoutDestroy");
}

EXPORT uint32_t cublasLtMatrixLayoutSetAttribute(void* layout, uint32_t attr, const void* buf,
                                                 size_t size) {
    const char* fn = "cublasLtMatrixLayoutSetAttribute";
    if (!live(layout, Kind::Layout, fn, "matLayout")) return INVALID_VALUE;
    LayoutObj& l = *static_cast<LayoutObj*>(layout);
    // Reads the attribute as the type cuBLASLt documents for it into its field.
    auto take = [&](auto v, const char* name, auto& field) -> uint32_t {
        if (!read_attr(buf, size, &v, fn, name)) return INVALID_VALUE;
        field = v;
        return SUCCESS;
    };
    switch (attr) {
        case LAYOUT_TYPE: return take(uint32_t{}, "TYPE", l.type);
        case LAYOUT_ORDER: {
            int32_t v;
            if (!read_attr(buf, size, &v, fn, "ORDER")) return INVALID_VALUE;
            if (v != ORDER_COL) {
                complain("%s: ORDER %d is not emulated (only CUBLASLT_ORDER_COL)", fn, v);
                return NOT_SUPPORTED;
            }
            l.order = v;
            return SUCCESS;
        }
        case LAYOUT_ROWS: return take(uint64_t{}, "ROWS", l.rows);
        case LAYOUT_COLS: return take(uint64_t{}, "COLS", l.cols);
        case LAYOUT_LD: return take(int64_t{}, "LD", l.ld);
        case LAYOUT_BATCH_COUNT: return take(int32_t{}, "BATCH_COUNT", l.batch);
        case LAYOUT_STRIDED_BATCH_OFFSET: return take(int64_t{}, "STRIDED_BATCH_OFFSET", l.stride);
        default:
            complain("%s: matrix layout attribute %u is not emulated", fn, attr);
            return NOT_SUPPORTED;
    }
}

EXPORT uint32_t cublasLtMatmulPreferenceCreate(void** pref) {
    return create(pref, Kind::Pref, "cublasLtMatmulPreferenceCreate", PrefObj{});
}

EXPORT uint32_t cublasLtMatmulPreferenceDestroy(void* pref) {
    return destroy<PrefObj>(pref, Kind::Pref, "cublasLtMatmulPreferenceDestroy");
}

EXPORT uint32_t cublasLtMatmulPreferenceSetAttribute(void* pref, uint32_t attr, const void* buf,
                                                     size_t size) {
    const char* fn = "cublasLtMatmulPreferenceSetAttribute";
    if (!live(pref, Kind::Pref, fn, "pref")) return INVALID_VALUE;
    PrefObj& p = *static_cast<PrefObj*>(pref);
    switch (attr) {
        case PREF_SEARCH_MODE:
            return read_attr(buf, size, &p.search_mode, fn, "SEARCH_MODE") ? SUCCESS
                                                                            : INVALID_VALUE;
        case PREF_MAX_WORKSPACE_BYTES:
            return read_attr(buf, size, &p.max_workspace, fn, "MAX_WORKSPACE_BYTES")
                       ? SUCCESS
                       : INVALID_VALUE;
        case PREF_REDUCTION_SCHEME_MASK:
            return read_attr(buf, size, &p.reduction_mask, fn, "REDUCTION_SCHEME_MASK")
                       ? SUCCESS
                       : INVALID_VALUE;
        case PREF_MIN_ALIGNMENT_A_BYTES:
        case PREF_MIN_ALIGNMENT_B_BYTES:
        case PREF_MIN_ALIGNMENT_C_BYTES:
        case PREF_MIN_ALIGNMENT_D_BYTES: {
            const int i = int(attr - PREF_MIN_ALIGNMENT_A_BYTES);
            const char* names[4] = {"MIN_ALIGNMENT_A_BYTES", "MIN_ALIGNMENT_B_BYTES",
                                    "MIN_ALIGNMENT_C_BYTES", "MIN_ALIGNMENT_D_BYTES"};
            return read_attr(buf, size, &p.align[i], fn, names[i]) ? SUCCESS : INVALID_VALUE;
        }
        case PREF_MAX_WAVES_COUNT:
            return read_attr(buf, size, &p.max_waves, fn, "MAX_WAVES_COUNT") ? SUCCESS
                                                                              : INVALID_VALUE;
        case PREF_IMPL_MASK:
            return read_attr(buf, size, &p.impl_mask, fn, "IMPL_MASK") ? SUCCESS : INVALID_VALUE;
        default:
            complain("%s: %u is not a cublasLtMatmulPreferenceAttributes_t", fn, attr);
            return INVALID_VALUE;
    }
}

EXPORT uint32_t cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* adesc, void* bdesc,
                                               void* cdesc, void* ddesc, void* pref,
                                               int requested, cublasLtMatmulHeuristicResult_t* out,
                                               int* count) {
    const char* fn = "cublasLtMatmulAlgoGetHeuristic";
    if (count != nullptr) *count = 0;
    if (!live(handle, Kind::Handle, fn, "lightHandle")) return NOT_INITIALIZED;
    if (requested <= 0) {
        complain("%s: requestedAlgoCount is %d (must be > 0)", fn, requested);
        return INVALID_VALUE;
    }
    if (out == nullptr || count == nullptr) {
        complain("%s: heuristicResultsArray or returnAlgoCount is NULL", fn);
        return INVALID_VALUE;
    }
    if (!live(desc, Kind::Desc, fn, "operationDesc") || !live(adesc, Kind::Layout, fn, "Adesc") ||
        !live(bdesc, Kind::Layout, fn, "Bdesc") || !live(cdesc, Kind::Layout, fn, "Cdesc") ||
        !live(ddesc, Kind::Layout, fn, "Ddesc") || !live(pref, Kind::Pref, fn, "preference"))
        return INVALID_VALUE;
    const auto& a = *static_cast<const LayoutObj*>(adesc);
    const auto& b = *static_cast<const LayoutObj*>(bdesc);
    const auto& c = *static_cast<const LayoutObj*>(cdesc);
    const auto& d = *static_cast<const LayoutObj*>(ddesc);
    Problem p;
    const auto& dsc = *static_cast<const DescObj*>(desc);
    Status s = check_problem(fn, dsc, a, b, c, d, &p);
    if (s != SUCCESS) return s;
    if (dsc.epilogue != EPILOGUE_DEFAULT && getenv("EMU_CUBLASLT_NO_EPILOGUE") != nullptr) {
        return SUCCESS;  // *count stays 0: no algorithm (EMU_CUBLASLT_NO_EPILOGUE)
    }
    // No algorithm works on pointers less aligned than their element.
    const auto& pr = *static_cast<const PrefObj*>(pref);
    const uint32_t types[4] = {a.type, b.type, c.type, d.type};
    for (int i = 0; i < 4; i++) {
        if (pr.align[i] < type_size(types[i])) {
            complain("%s: no algorithm for %c aligned to %u bytes (a %s element takes %zu)", fn,
                     "ABCD"[i], pr.align[i], type_name(types[i]), type_size(types[i]));
            return NOT_SUPPORTED;
        }
    }
    memset(out, 0, sizeof *out);
    out->workspaceSize = 0;
    out->state = SUCCESS;
    out->wavesCount = 1.0f;
    *count = 1;
    return SUCCESS;
}

EXPORT uint32_t cublasLtMatmul(void* handle, void* desc, const void* alpha, const void* a,
                               void* adesc, const void* b, void* bdesc, const void* beta,
                               const void* c, void* cdesc, void* d, void* ddesc,
                               const cublasLtMatmulAlgo_t* /*algo: NULL or ours, all zero*/,
                               void* workspace, size_t workspace_size, void* /*stream*/) {
    const char* fn = "cublasLtMatmul";
    if (!live(handle, Kind::Handle, fn, "lightHandle")) return NOT_INITIALIZED;
    if (!live(desc, Kind::Desc, fn, "computeDesc") || !live(adesc, Kind::Layout, fn, "Adesc") ||
        !live(bdesc, Kind::Layout, fn, "Bdesc") || !live(cdesc, Kind::Layout, fn, "Cdesc") ||
        !live(ddesc, Kind::Layout, fn, "Ddesc"))
        return INVALID_VALUE;
    const auto& la = *static_cast<const LayoutObj*>(adesc);
    const auto& lb = *static_cast<const LayoutObj*>(bdesc);
    const auto& lc = *static_cast<const LayoutObj*>(cdesc);
    const auto& ld = *static_cast<const LayoutObj*>(ddesc);
    Args g;
    Status s = check_problem(fn, *static_cast<const DescObj*>(desc), la, lb, lc, ld, &g.p);
    if (s != SUCCESS) return s;
    if (alpha == nullptr || beta == nullptr) {
        complain("%s: alpha or beta is NULL", fn);
        return INVALID_VALUE;
    }
    if (workspace == nullptr && workspace_size > 0) {
        complain("%s: workspace is NULL but workspaceSizeInBytes is %zu", fn, workspace_size);
        return INVALID_VALUE;
    }
    float alpha_f, beta_f;
    memcpy(&alpha_f, alpha, 4);
    memcpy(&beta_f, beta, 4);
    g.alpha = alpha_f;
    g.beta = beta_f;
    g.a = a;
    g.b = b;
    g.c = c;
    g.d = d;
    const auto& dsc = *static_cast<const DescObj*>(desc);
    if (dsc.epilogue == EPILOGUE_BIAS || dsc.epilogue == EPILOGUE_GELU_AUX_BIAS) {
        // The bias has D's type (no BIAS_DATA_TYPE is set) and one value per row of D.
        const size_t bytes = type_size(g.p.cd_type);
        if (dsc.bias == nullptr || !aligned(dsc.bias, bytes)) {
            complain("%s: bias epilogue with bias pointer %p (NULL or not aligned to D's %zu-byte elements)", fn,
                     dsc.bias, bytes);
            return INVALID_VALUE;
        }
        g.bias = dsc.bias;
    }
    if (dsc.epilogue == EPILOGUE_BGRADA) {
        // The gradient is written where the bias pointer points, in D's type (no BIAS_DATA_TYPE is
        // set), one value per row of D: the sum over k of op(A)'s row. One matrix.
        const size_t bytes = type_size(g.p.cd_type);
        if (dsc.bias == nullptr || !aligned(dsc.bias, bytes) || g.p.batch != 1) {
            complain("%s: BGRADA epilogue with bias pointer %p (NULL or not aligned to D's %zu-byte elements) or "
                     "%lld batches",
                     fn, dsc.bias, bytes, (long long)g.p.batch);
            return INVALID_VALUE;
        }
        g.bias_grad = const_cast<void*>(dsc.bias);
    }
    if (dsc.epilogue == EPILOGUE_GELU_AUX_BIAS || dsc.epilogue == EPILOGUE_DGELU) {
        // GELU's input in D's type (no AUX_DATA_TYPE is set), laid out like D with its own leading
        // dimension, which cuBLASLt requires to be a multiple of 8 and at least D's rows; one matrix.
        if (dsc.aux == nullptr || !aligned(dsc.aux, 16) || dsc.aux_ld % 8 != 0 || dsc.aux_ld < g.p.m ||
            g.p.batch != 1) {
            complain("%s: GELU epilogue with aux pointer %p (NULL or not 16-byte aligned), AUX_LD %lld (not a multiple "
                     "of 8 or below D's %lld rows) or %lld batches",
                     fn, dsc.aux, (long long)dsc.aux_ld, (long long)g.p.m, (long long)g.p.batch);
            return INVALID_VALUE;
        }
        g.aux = dsc.aux;
        g.aux_ld = dsc.aux_ld;
        g.gelu = dsc.epilogue == EPILOGUE_GELU_AUX_BIAS ? Gelu::Forward : Gelu::Backward;
    }
    const Problem& p = g.p;
    if (p.m == 0 || p.n == 0) return SUCCESS;  // nothing to write
    const bool reads_ab = g.alpha != 0.0, reads_c = g.beta != 0.0;
    if ((reads_ab && (a == nullptr || b == nullptr)) || (reads_c && c == nullptr) || d == nullptr) {
        complain("%s: NULL operand for a %lldx%lldx%lld problem (A %p, B %p, C %p with beta %g, "
                 "D %p)",
                 fn, (long long)p.m, (long long)p.n, (long long)p.k, a, b, c, g.beta, d);
        return INVALID_VALUE;
    }
    const size_t ab = type_size(p.ab_type), cd = type_size(p.cd_type);
    if ((reads_ab && (!aligned(a, ab) || !aligned(b, ab))) || (reads_c && !aligned(c, cd)) ||
        !aligned(d, cd)) {
        complain("%s: misaligned operand (A %p, B %p: %zu-byte elements; C %p, D %p: %zu-byte "
                 "elements)",
                 fn, a, b, ab, c, d, cd);
        return INVALID_VALUE;
    }
    if (c == d && reads_c && (lc.ld != ld.ld || (p.batch > 1 && lc.stride != ld.stride))) {
        complain("%s: in-place C == D needs identical C and D layouts (C %s stride %lld, "
                 "D %s stride %lld)",
                 fn, shape(lc).c_str(), (long long)lc.stride, shape(ld).c_str(),
                 (long long)ld.stride);
        return INVALID_VALUE;
    }
    if (p.batch > 1) {
        const int64_t span = (p.n - 1) * p.ldd + p.m;  // elements one D matrix covers
        if (std::llabs(p.sd) < span) {
            static std::once_flag once;
            std::call_once(once, [&] {
                complain("warning: %s: batched D matrices overlap (stride %lld < %lld elements "
                         "per matrix); a GPU would race on them (reported once)",
                         fn, (long long)p.sd, (long long)span);
            });
        }
    }
    if (p.ab_type == CUDA_R_16BF && p.cd_type == CUDA_R_16BF)
        run<uint16_t, uint16_t>(g);
    else if (p.ab_type == CUDA_R_16BF)
        run<uint16_t, float>(g);
    else
        run<float, float>(g);
    return SUCCESS;
}
