// The emulated cuBLASLt's ABI (the values and struct layouts of cudarc's bindings) and its objects:
// handles, descriptors, layouts and preferences, enrolled in a registry of live ones that catches
// stale, foreign and mixed-up handles. Included by cublaslt.cpp alone (hence the anonymous
// namespaces), after cublaslt_matmul.h.
#pragma once
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

namespace {

// ---- ABI: values from cudarc-0.19.10/src/cublaslt/sys/mod.rs (cuda-13000) ----------------------

using Status = uint32_t;  // cublasStatus_t
constexpr Status SUCCESS = 0;
constexpr Status NOT_INITIALIZED = 1;
constexpr Status ALLOC_FAILED = 3;
constexpr Status INVALID_VALUE = 7;
constexpr Status NOT_SUPPORTED = 15;

// cudaDataType_t
constexpr uint32_t CUDA_R_32F = 0;
constexpr uint32_t CUDA_R_16BF = 14;

// cublasComputeType_t
constexpr uint32_t COMPUTE_32F = 68;
constexpr uint32_t COMPUTE_32F_PEDANTIC = 69;

// cublasOperation_t
constexpr int32_t OP_N = 0;
constexpr int32_t OP_T = 1;
constexpr int32_t OP_C = 2;  // the same as T for real data

// cublasLtMatmulDescAttributes_t
constexpr uint32_t DESC_COMPUTE_TYPE = 0;
constexpr uint32_t DESC_SCALE_TYPE = 1;
constexpr uint32_t DESC_POINTER_MODE = 2;
constexpr uint32_t DESC_TRANSA = 3;
constexpr uint32_t DESC_TRANSB = 4;
constexpr uint32_t DESC_TRANSC = 5;
constexpr uint32_t DESC_EPILOGUE = 7;
constexpr uint32_t DESC_BIAS_POINTER = 8;
constexpr uint32_t DESC_EPILOGUE_AUX_POINTER = 11;
constexpr uint32_t DESC_EPILOGUE_AUX_LD = 12;

constexpr int32_t POINTER_MODE_HOST = 0;
constexpr uint32_t EPILOGUE_DEFAULT = 1;
constexpr uint32_t EPILOGUE_BIAS = 4;  // D = alpha·op(A)·op(B) + beta·C + bias broadcast over D's columns
constexpr uint32_t EPILOGUE_GELU_AUX_BIAS = 164;  // aux = (that, with the bias), D = GELU(aux)
constexpr uint32_t EPILOGUE_DGELU = 192;          // D = (alpha·op(A)·op(B) + beta·C) · GELU'(aux)
constexpr uint32_t EPILOGUE_BGRADA = 256;         // D as DEFAULT; bias ← Σ over k of op(A)'s rows

// cublasLtMatrixLayoutAttribute_t
constexpr uint32_t LAYOUT_TYPE = 0;
constexpr uint32_t LAYOUT_ORDER = 1;
constexpr uint32_t LAYOUT_ROWS = 2;
constexpr uint32_t LAYOUT_COLS = 3;
constexpr uint32_t LAYOUT_LD = 4;
constexpr uint32_t LAYOUT_BATCH_COUNT = 5;
constexpr uint32_t LAYOUT_STRIDED_BATCH_OFFSET = 6;

constexpr int32_t ORDER_COL = 0;

// cublasLtMatmulPreferenceAttributes_t
constexpr uint32_t PREF_SEARCH_MODE = 0;
constexpr uint32_t PREF_MAX_WORKSPACE_BYTES = 1;
constexpr uint32_t PREF_REDUCTION_SCHEME_MASK = 3;
constexpr uint32_t PREF_MIN_ALIGNMENT_A_BYTES = 5;
constexpr uint32_t PREF_MIN_ALIGNMENT_B_BYTES = 6;
constexpr uint32_t PREF_MIN_ALIGNMENT_C_BYTES = 7;
constexpr uint32_t PREF_MIN_ALIGNMENT_D_BYTES = 8;
constexpr uint32_t PREF_MAX_WAVES_COUNT = 9;
constexpr uint32_t PREF_IMPL_MASK = 12;

}  // namespace

extern "C" {
struct cublasLtMatmulAlgo_t {
    uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    uint32_t state;  // cublasStatus_t
    float wavesCount;
    int reserved[4];
};
}
static_assert(sizeof(cublasLtMatmulAlgo_t) == 64, "cublasLtMatmulAlgo_t is 8 u64");
static_assert(sizeof(cublasLtMatmulHeuristicResult_t) == 96, "heuristic result layout");
static_assert(offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize) == 64, "layout");
static_assert(offsetof(cublasLtMatmulHeuristicResult_t, state) == 72, "layout");
static_assert(offsetof(cublasLtMatmulHeuristicResult_t, wavesCount) == 76, "layout");

namespace {

// ---- messages ------------------------------------------------------------------------------------

__attribute__((format(printf, 1, 2))) void complain(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "emulated cuBLASLt: %s\n", buf);
    fflush(stderr);
}

const char* type_name(uint32_t t) {
    switch (t) {
        case CUDA_R_32F: return "CUDA_R_32F";
        case CUDA_R_16BF: return "CUDA_R_16BF";
        case 2: return "CUDA_R_16F";
        case 1: return "CUDA_R_64F";
        default: return "an unsupported cudaDataType";
    }
}

size_t type_size(uint32_t t) {
    switch (t) {
        case CUDA_R_32F: return 4;
        case CUDA_R_16BF: return 2;
        default: return 0;
    }
}

// ---- objects and a registry of live ones (catches stale, foreign and mixed-up handles) -----------

enum class Kind { Handle, Desc, Layout, Pref };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::Handle: return "cublasLtHandle_t";
        case Kind::Desc: return "cublasLtMatmulDesc_t";
        case Kind::Layout: return "cublasLtMatrixLayout_t";
        case Kind::Pref: return "cublasLtMatmulPreference_t";
    }
    return "?";
}

struct HandleObj {
    int unused = 0;
};

struct DescObj {
    uint32_t compute = COMPUTE_32F;
    uint32_t scale = CUDA_R_32F;
    int32_t pointer_mode = POINTER_MODE_HOST;
    int32_t transa = OP_N;
    int32_t transb = OP_N;
    uint32_t epilogue = EPILOGUE_DEFAULT;
    const void* bias = nullptr;  // D's type, one value per row of D
    void* aux = nullptr;         // GELU's input, D's type, column-major with leading dimension aux_ld
    int64_t aux_ld = 0;
};

struct LayoutObj {
    uint32_t type = CUDA_R_32F;
    int32_t order = ORDER_COL;
    uint64_t rows = 0;
    uint64_t cols = 0;
    int64_t ld = 0;
    int32_t batch = 1;
    int64_t stride = 0;
};

struct PrefObj {
    uint32_t search_mode = 0;
    uint64_t max_workspace = 0;
    uint32_t reduction_mask = 7;
    uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D
    float max_waves = 0.0f;
    uint64_t impl_mask = ~uint64_t(0);
};

std::mutex& registry_mutex() {
    static std::mutex m;
    return m;
}
std::unordered_map<const void*, Kind>& registry() {
    static std::unordered_map<const void*, Kind> r;
    return r;
}

void enroll(const void* p, Kind k) {
    std::lock_guard<std::mutex> g(registry_mutex());
    registry()[p] = k;
}

// True when p is a live object of kind k; complains otherwise (null included).
bool live(const void* p, Kind k, const char* fn, const char* what) {
    if (p == nullptr) {
        complain("%s: %s (%s) is NULL", fn, what, kind_name(k));
        return false;
    }
    std::lock_guard<std::mutex> g(registry_mutex());
    auto it = registry().find(p);
    if (it == registry().end()) {
        complain("%s: %s %p is not a live %s (destroyed already, or never created)", fn, what, p,
                 kind_name(k));
        return false;
    }
    if (it->second != k) {
        complain("%s: %s %p is a %s, not a %s", fn, what, p, kind_name(it->second), kind_name(k));
        return false;
    }
    return true;
}

template <class T>
Status destroy(void* p, Kind k, const char* fn) {
    if (p == nullptr) return SUCCESS;
    {
        std::lock_guard<std::mutex> g(registry_mutex());
        auto it = registry().find(p);
        if (it == registry().end() || it->second != k) {
            complain("%s: %p is not a live %s (double destroy?)", fn, p, kind_name(k));
            return INVALID_VALUE;
        }
        registry().erase(it);
    }
    delete static_cast<T*>(p);
    return SUCCESS;
}

template <class T>
Status create(void** out, Kind k, const char* fn, const T& init) {
    if (out == nullptr) {
        complain("%s: the output pointer is NULL", fn);
        return INVALID_VALUE;
    }
    T* obj = new (std::nothrow) T(init);
    if (obj == nullptr) return ALLOC_FAILED;
    enroll(obj, k);
    *out = obj;
    return SUCCESS;
}

template <class V>
bool read_attr(const void* buf, size_t size, V* out, const char* fn, const char* attr) {
    if (buf == nullptr) {
        complain("%s(%s): buf is NULL", fn, attr);
        return false;
    }
    if (size != sizeof(V)) {
        complain("%s(%s): sizeInBytes is %zu, the attribute takes %zu", fn, attr, size, sizeof(V));
        return false;
    }
    memcpy(out, buf, sizeof(V));
    return true;
}

}  // namespace
