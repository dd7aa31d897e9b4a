// The CUDA built-ins fastae's kernels use, for the host C++ compiler: a CUDA
// block runs as one fiber per thread on one OS thread, switched at every
// __syncthreads (a real barrier: a thread that reads before its block-mates
// have written reads garbage), blocks spread over a few OS threads. Shared
// memory lives in one arena per running block, sized exactly as the launch asks
// and refilled with NaN bytes for each block; under AddressSanitizer whatever
// the launch did not ask for is poisoned, under ThreadSanitizer the fibers are
// separate threads whose only synchronisation is the barrier. The loader
// (fastae/cuda/emulator/kernels.py) compiles a kernel source after this header,
// with its `__shared__` declarations turned into shared_array/dynamic_shared
// calls, and one launcher per template instance (launch<&kernel>).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define FASTAE_EMU_UNTRACKED __attribute__((no_sanitize_thread, noinline))
#else
#define FASTAE_EMU_UNTRACKED
#endif

// ---------------------------------------------------------------- qualifiers
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __align__
#undef __launch_bounds__
#undef __shared__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) alignas(n)
#define __launch_bounds__(...)  // read by the loader, which checks every launch against it
// The loader rewrites every __shared__ declaration; one it could not read stops the build here.
#define __shared__ FASTAE_EMULATOR_COULD_NOT_PLACE_THIS_SHARED_DECLARATION
#define __constant__ FASTAE_EMULATOR_HAS_NO_CONSTANT_MEMORY

// ---------------------------------------------------------------- device functions
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
inline long long __double_as_longlong(double v) { long long i; std::memcpy(&i, &v, sizeof i); return i; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, sizeof i); return i; }
using std::fma;  // (float and double overloads, as on the device)
using std::max;
using std::min;

namespace fastae_emu {

enum State : int { READY, AT_BARRIER, DONE, TRAPPED };

struct Fiber {
    void* sp = nullptr;         // saved stack pointer while switched out
    char* stack = nullptr;      // lowest address of its stack
    uint3 idx{};                // its threadIdx
    int state = DONE;
    void* fake_stack = nullptr; // AddressSanitizer's, across switches
    void* tsan = nullptr;       // ThreadSanitizer's fiber
};

struct Launch {
    void (*body)(void** args);  // the kernel called with its arguments
    void** args;
    dim3 grid, block;
    size_t dynamic;             // dynamic shared memory the launch asked for
    size_t dynamic_limit;       // the kernel's max_dynamic_shared_size_bytes (0: not raised)
    size_t optin;               // the device's opt-in limit of shared memory per block
    long long blocks;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_lock;
    char* error;
    size_t error_size;
};

constexpr size_t kStack = 256 * 1024;          // per fiber (sanitizers grow frames); untouched pages cost nothing
constexpr size_t kArena = 512 * 1024;          // shared memory of one block: the opt-in limit and the statics
constexpr size_t kRedzone = 64;                // poisoned bytes between shared arrays
constexpr size_t kDefaultShared = 48 * 1024;   // shared memory a block gets without opting in
constexpr unsigned kMaxThreads = 1024;
constexpr int kSites = 64;                    // static __shared__ declarations a kernel may make

extern "C" void fastae_emu_switch(void** save_sp, void* to_sp);
extern "C" void fastae_emu_trampoline();

// x86-64 System V: save the callee-saved registers and the FP control words on
// the old stack, switch stacks, restore them from the new one. A new fiber's
// stack starts with a frame whose return address is the trampoline, which calls
// r13(r12) = fiber_main(fiber).
asm(R"(
    .text
    .p2align 4
    .globl fastae_emu_switch
    .hidden fastae_emu_switch
    .type fastae_emu_switch, @function
fastae_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    fnstcw (%rsp)
    stmxcsr 8(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    fldcw (%rsp)
    ldmxcsr 8(%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fastae_emu_switch, .-fastae_emu_switch

    .p2align 4
    .globl fastae_emu_trampoline
    .hidden fastae_emu_trampoline
    .type fastae_emu_trampoline, @function
fastae_emu_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size fastae_emu_trampoline, .-fastae_emu_trampoline
)");

// One OS thread's state: its fibers, the block they run and the block's shared memory.
struct Worker {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_slots = 0;
    unsigned char* arena = nullptr;
    size_t arena_used = 0, arena_dirty = 0, static_bytes = 0;
    struct Site { int id; void* at; } sites[kSites];  // static __shared__ arrays of the running block
    int n_sites = 0;
    Launch* launch = nullptr;
    Fiber* running = nullptr;
    uint3 block_idx{};
    unsigned generation = 0;                   // barriers passed by the running block
    void* main_sp = nullptr;
    void* main_fake_stack = nullptr;
    const void* main_bottom = nullptr;
    size_t main_size = 0;
    void* main_tsan = nullptr;
    char sync_start = 0, sync_exit = 0, sync_barrier[2] = {0, 0};  // ThreadSanitizer's sync objects

    ~Worker() {
        if (stacks) munmap(stacks, stack_slots * (kStack + page()));
        std::free(arena);
    }
    static size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }

    void reserve(unsigned n) {
        if (!arena) arena = static_cast<unsigned char*>(std::aligned_alloc(256, kArena));
        if (n <= stack_slots) return;
        if (stacks) munmap(stacks, stack_slots * (kStack + page()));
        size_t slot = kStack + page();
        stacks = static_cast<char*>(mmap(nullptr, n * slot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
                                         MAP_NORESERVE, -1, 0));
        if (stacks == MAP_FAILED) { stacks = nullptr; stack_slots = 0; fibers.clear(); return; }
        for (size_t i = 0; i < n; ++i) mprotect(stacks + i * slot, page(), PROT_NONE);  // overflow guard
        drop_tsan_fibers();
        fibers.assign(n, Fiber{});
        for (size_t i = 0; i < n; ++i) fibers[i].stack = stacks + i * slot + page();
        stack_slots = n;
    }

    void drop_tsan_fibers() {
#if defined(__SANITIZE_THREAD__)
        for (Fiber& f : fibers) if (f.tsan) { __tsan_destroy_fiber(f.tsan); f.tsan = nullptr; }
#endif
    }
};

inline thread_local Worker* current = nullptr;
inline thread_local Worker* owned = nullptr;

inline Worker& this_worker() {
    if (!owned) owned = new Worker();  // one per OS thread, kept for its lifetime
    return *owned;
}

FASTAE_EMU_UNTRACKED inline void fail(Launch* L, const char* what) {
    std::lock_guard<std::mutex> hold(L->error_lock);
    if (!L->failed.exchange(true)) std::snprintf(L->error, L->error_size, "%s", what);
}

// ---------------------------------------------------------------- switching
FASTAE_EMU_UNTRACKED inline void switch_to(Worker& w, Fiber& f) {  // scheduler -> fiber
    w.running = &f;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(&w.main_fake_stack, f.stack, kStack);
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
    fastae_emu_switch(&w.main_sp, f.sp);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(w.main_fake_stack, nullptr, nullptr);
#endif
}

FASTAE_EMU_UNTRACKED inline void switch_to_scheduler(Worker& w, Fiber& f, bool final) {  // fiber -> scheduler
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(final ? nullptr : &f.fake_stack, w.main_bottom, w.main_size);
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(w.main_tsan, __tsan_switch_to_fiber_no_sync);
#endif
    fastae_emu_switch(&f.sp, w.main_sp);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(f.fake_stack, &w.main_bottom, &w.main_size);
#endif
    (void)final;
}

[[noreturn]] FASTAE_EMU_UNTRACKED inline void trap(const char* what) {
    Worker& w = *current;
    fail(w.launch, what);
    w.running->state = TRAPPED;
    switch_to_scheduler(w, *w.running, true);
    __builtin_unreachable();  // a trapped fiber is never resumed
}

FASTAE_EMU_UNTRACKED inline void fiber_main(Fiber* f) {
    Worker& w = *current;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &w.main_bottom, &w.main_size);
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&w.sync_start);
#endif
    w.launch->body(w.launch->args);
#if defined(__SANITIZE_THREAD__)
    __tsan_release(&w.sync_exit);
#endif
    f->state = DONE;
    switch_to_scheduler(w, *f, true);
    __builtin_unreachable();
}

FASTAE_EMU_UNTRACKED inline void start(Fiber& f) {  // a fresh frame that enters fiber_main(&f)
    uintptr_t top = ((uintptr_t)(f.stack + kStack)) & ~(uintptr_t)15;
    uint64_t* frame = reinterpret_cast<uint64_t*>(top - 88);
    uint32_t* control = reinterpret_cast<uint32_t*>(frame);
    control[0] = 0x037F;   // x87 control word: the default
    control[2] = 0x1F80;   // MXCSR: round to nearest, exceptions masked, no flush to zero
    frame[2] = 0;                                               // r15
    frame[3] = 0;                                               // r14
    frame[4] = (uint64_t)(void (*)(Fiber*))fiber_main;         // r13
    frame[5] = (uint64_t)&f;                                    // r12
    frame[6] = 0;                                               // rbx
    frame[7] = 0;                                               // rbp
    frame[8] = (uint64_t)fastae_emu_trampoline;                 // return address
    f.sp = frame;
    f.state = READY;
#if defined(__SANITIZE_THREAD__)
    if (!f.tsan) f.tsan = __tsan_create_fiber(0);
#endif
}

// ---------------------------------------------------------------- what kernels call
FASTAE_EMU_UNTRACKED inline uint3 thread_idx() { return current->running->idx; }
FASTAE_EMU_UNTRACKED inline uint3 block_idx() { return current->block_idx; }
FASTAE_EMU_UNTRACKED inline dim3 block_dim() { return current->launch->block; }
FASTAE_EMU_UNTRACKED inline dim3 grid_dim() { return current->launch->grid; }

FASTAE_EMU_UNTRACKED inline void barrier() {
    Worker& w = *current;
    Fiber& f = *w.running;
    unsigned gen = w.generation;
#if defined(__SANITIZE_THREAD__)
    __tsan_release(&w.sync_barrier[gen & 1]);  // what this thread did before the barrier ...
#endif
    f.state = AT_BARRIER;
    switch_to_scheduler(w, f, false);
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&w.sync_barrier[gen & 1]);  // ... happens before what every thread does after it
#endif
}

FASTAE_EMU_UNTRACKED inline void fill_garbage(unsigned char* p, size_t n) {
#if !defined(__SANITIZE_THREAD__)
    std::memset(p, 0xFF, n);  // NaN in every float type: a read of memory nobody wrote shows
#else
    (void)p; (void)n;  // (the fill would be a write by the scheduler that every fiber then races)
#endif
}

FASTAE_EMU_UNTRACKED inline size_t shared_limit(const Launch& L) {
    return L.dynamic_limit ? L.optin : kDefaultShared;
}

// A static __shared__ array: the block's one copy, placed in the arena when a thread first declares it.
FASTAE_EMU_UNTRACKED inline void* static_site(int site, size_t bytes, size_t align) {
    Worker& w = *current;
    for (int i = 0; i < w.n_sites; ++i) if (w.sites[i].id == site) return w.sites[i].at;
    size_t at = (w.arena_used + std::max<size_t>(align, 16) - 1) & ~(std::max<size_t>(align, 16) - 1);
    w.static_bytes += bytes;
    if (w.static_bytes + w.launch->dynamic > shared_limit(*w.launch) || at + bytes + kRedzone > kArena ||
        w.n_sites == kSites) {
        char what[256];
        std::snprintf(what, sizeof what, "too much shared memory: %zu bytes static + %zu dynamic, the limit is %zu%s",
                      w.static_bytes, w.launch->dynamic, shared_limit(*w.launch),
                      w.launch->dynamic_limit ? "" : " (without max_dynamic_shared_size_bytes raised)");
        trap(what);
    }
    void* p = w.arena + at;
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#endif
    fill_garbage(w.arena + at, bytes);
    w.arena_used = at + bytes + kRedzone;
    w.arena_dirty = std::max(w.arena_dirty, w.arena_used);
    w.sites[w.n_sites++] = Worker::Site{site, p};
    return p;
}

template <class T> inline T& shared_array(int site) {
    return *static_cast<T*>(static_site(site, sizeof(T), alignof(T)));
}

template <class T> FASTAE_EMU_UNTRACKED inline T* dynamic_shared() { return reinterpret_cast<T*>(current->arena); }

// ---------------------------------------------------------------- running a launch
FASTAE_EMU_UNTRACKED inline void prepare_block(Worker& w, long long b) {
    Launch& L = *w.launch;
    w.block_idx = uint3{(unsigned)(b % L.grid.x), (unsigned)((b / L.grid.x) % L.grid.y),
                        (unsigned)(b / ((long long)L.grid.x * L.grid.y))};
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(w.arena, kArena);
#endif
    fill_garbage(w.arena, std::max(w.arena_dirty, L.dynamic));
#if defined(__SANITIZE_ADDRESS__)
    ASAN_POISON_MEMORY_REGION(w.arena, kArena);
    ASAN_UNPOISON_MEMORY_REGION(w.arena, L.dynamic);
#endif
    w.arena_used = L.dynamic + kRedzone;
    w.arena_dirty = w.arena_used;
    w.n_sites = 0;
    w.static_bytes = 0;
    w.generation = 0;
    const unsigned bx = L.block.x, by = L.block.y, n = bx * by * L.block.z;
    for (unsigned t = 0; t < n; ++t) {
        w.fibers[t].idx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
        start(w.fibers[t]);
    }
#if defined(__SANITIZE_THREAD__)
    __tsan_release(&w.sync_start);
#endif
}

// Runs one block: every thread up to the next barrier, in order, until all have returned.
FASTAE_EMU_UNTRACKED inline bool run_block(Worker& w, long long b) {
    prepare_block(w, b);
    Launch& L = *w.launch;
    const unsigned n = L.block.x * L.block.y * L.block.z;
    for (;;) {
        unsigned waiting = 0, done = 0;
        for (unsigned t = 0; t < n; ++t) {
            Fiber& f = w.fibers[t];
            if (f.state == READY) switch_to(w, f);
            if (f.state == TRAPPED) return false;
            waiting += f.state == AT_BARRIER;
            done += f.state == DONE;
        }
        if (done == n) break;
        if (done) {
            char what[200];
            std::snprintf(what, sizeof what, "__syncthreads reached by %u of the %u threads of block (%u, %u, %u); "
                          "the other %u returned (a barrier in divergent code)", waiting, n, w.block_idx.x,
                          w.block_idx.y, w.block_idx.z, done);
            fail(&L, what);
            return false;
        }
        for (unsigned t = 0; t < n; ++t) w.fibers[t].state = READY;
        ++w.generation;
    }
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&w.sync_exit);
#endif
    return true;
}

FASTAE_EMU_UNTRACKED inline void work(Launch& L) {
    Worker& w = this_worker();
    const unsigned n = L.block.x * L.block.y * L.block.z;
    w.reserve(n);
    if (w.stack_slots < n || !w.arena) { fail(&L, "could not map the fibers' stacks"); return; }
    Worker* before = current;
    current = &w;
    w.launch = &L;
#if defined(__SANITIZE_THREAD__)
    w.main_tsan = __tsan_get_current_fiber();
#endif
    bool clean = true;
    for (long long b; !L.failed.load() && (b = L.next.fetch_add(1)) < L.blocks;)
        if (!(clean = run_block(w, b))) break;
    if (!clean) w.drop_tsan_fibers();  // abandoned fibers: ThreadSanitizer's shadow stacks start afresh
    current = before;
}

// A few OS threads that take blocks beside the launching thread.
struct Pool {
    std::mutex lock;
    std::condition_variable wake, idle;
    Launch* job = nullptr;
    unsigned long long epoch = 0;
    int wanted = 0, busy = 0;
    unsigned started = 0;

    void run(Launch& L, int helpers) {
        std::unique_lock<std::mutex> hold(lock);
        for (; (int)started < helpers; ++started) std::thread([this] { loop(); }).detach();
        job = &L;
        wanted = helpers;
        busy = helpers;
        ++epoch;
        wake.notify_all();
        hold.unlock();
        work(L);
        hold.lock();
        idle.wait(hold, [this] { return busy == 0; });
        job = nullptr;
    }

    void loop() {
        unsigned long long seen = 0;
        std::unique_lock<std::mutex> hold(lock);
        for (;;) {
            wake.wait(hold, [&] { return epoch != seen && wanted > 0; });
            seen = epoch;
            --wanted;
            Launch* L = job;
            hold.unlock();
            work(*L);
            hold.lock();
            if (--busy == 0) idle.notify_all();
        }
    }
};

inline Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: its threads outlive static destruction
    return *p;
}

inline std::mutex& launch_lock() {
    static std::mutex m;
    return m;
}

template <class... P> constexpr size_t arity(void (*)(P...)) { return sizeof...(P); }

template <class... P, size_t... I>
inline void call(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}

template <auto K> inline void body(void** args) { call(K, args, std::make_index_sequence<arity(K)>()); }

// ---------------------------------------------------------------- the kernel's C signature
template <class T> struct Code;
template <> struct Code<float> { static constexpr char c = 'f'; };
template <> struct Code<double> { static constexpr char c = 'd'; };
template <> struct Code<__half> { static constexpr char c = 'e'; };
template <> struct Code<__nv_bfloat16> { static constexpr char c = 'E'; };
template <> struct Code<int> { static constexpr char c = 'i'; };
template <> struct Code<unsigned> { static constexpr char c = 'I'; };
template <> struct Code<long long> { static constexpr char c = 'q'; };
template <> struct Code<unsigned long long> { static constexpr char c = 'Q'; };
template <> struct Code<long> { static constexpr char c = 'q'; };
template <> struct Code<unsigned long> { static constexpr char c = 'Q'; };
template <> struct Code<char> { static constexpr char c = 'b'; };
template <> struct Code<unsigned char> { static constexpr char c = 'B'; };
template <> struct Code<short> { static constexpr char c = 'h'; };
template <> struct Code<unsigned short> { static constexpr char c = 'H'; };
template <> struct Code<void> { static constexpr char c = 'v'; };

template <class T> struct Param {  // "f" for a float, "*f" for a pointer to floats
    static void put(char*& out) { *out++ = Code<std::remove_cv_t<T>>::c; }
};
template <class T> struct Param<T*> {
    static void put(char*& out) { *out++ = '*'; Param<T>::put(out); }
};

template <class... P> inline void signature(void (*)(P...), char* out) {
    (Param<std::remove_cv_t<P>>::put(out), ...);
    *out = 0;
}

// Runs the grid: the checks a device makes before a launch are the caller's (kernels.py).
template <auto K>
inline int launch(const unsigned* grid, const unsigned* block, size_t dynamic, size_t dynamic_limit, size_t optin,
                  int threads, void** args, char* error, size_t error_size) {
    std::lock_guard<std::mutex> hold(launch_lock());
    Launch L;
    L.body = &body<K>;
    L.args = args;
    L.grid = dim3(grid[0], grid[1], grid[2]);
    L.block = dim3(block[0], block[1], block[2]);
    L.dynamic = dynamic;
    L.dynamic_limit = dynamic_limit;
    L.optin = optin;
    L.blocks = (long long)grid[0] * grid[1] * grid[2];
    L.error = error;
    L.error_size = error_size;
    error[0] = 0;
    if (dynamic > (dynamic_limit ? dynamic_limit : kDefaultShared)) {
        std::snprintf(error, error_size, "%zu bytes of dynamic shared memory asked for, the kernel allows %zu "
                      "(raise max_dynamic_shared_size_bytes)", dynamic, dynamic_limit ? dynamic_limit : kDefaultShared);
        return 1;
    }
    int helpers = (int)std::min<long long>(threads, L.blocks) - 1;
    if (helpers > 0) pool().run(L, helpers);
    else work(L);
    return L.failed.load() ? 1 : 0;
}

}  // namespace fastae_emu

#define threadIdx (::fastae_emu::thread_idx())
#define blockIdx (::fastae_emu::block_idx())
#define blockDim (::fastae_emu::block_dim())
#define gridDim (::fastae_emu::grid_dim())
#define __syncthreads() (::fastae_emu::barrier())
#define __trap() (::fastae_emu::trap("__trap() called"))
