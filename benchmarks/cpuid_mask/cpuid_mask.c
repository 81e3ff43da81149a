/* cpuid_mask.c: makes one process see its x86-64 CPU without AVX-512, AVX-VNNI or AMX, at native speed.
 *
 * Why: TensorFlow, oneDNN, XNNPACK, ruy and PyTorch pick their kernels from CPUID at run time, and the
 * machines these benchmarks get vary between AVX-512/AMX Xeons and AVX-512 EPYCs. Masking CPUID lets one
 * machine measure what an AVX2-only CPU (Zen 2/3, Haswell to Comet Lake) would run: the same code paths,
 * chosen by the same libraries, on real silicon. It does not make the core slower or narrower than it is;
 * a figure measured under it names the real CPU and says "AVX-512 masked" (edgemeta.cpu reads
 * `edgemeta_cpuid_masked_flags` below).
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, flag `cpuid_fault` in /proc/cpuinfo) turns every
 * CPUID instruction into SIGSEGV. The handler runs the real CPUID with faulting briefly off, clears the
 * masked bits and steps over the instruction. Faulting is per thread and inherited by threads created later;
 * execve resets it, and LD_PRELOAD loads this library again in the new program. Handlers other code installs
 * for SIGSEGV (Python's faulthandler, pytest) are kept and called for every fault that is not a CPUID.
 *
 * Build and use it through benchmarks/avx2_only, which also masks glibc's own choices (GLIBC_TUNABLES).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

/* The /proc/cpuinfo names of what is removed, for edgemeta.cpu and for reports. */
const char edgemeta_cpuid_masked_flags[] =
    "avx512f avx512dq avx512ifma avx512pf avx512er avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 gfni "
    "avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_4vnniw avx512_4fmaps avx512_vp2intersect amx_bf16 "
    "avx512_fp16 amx_tile amx_int8 avx_vnni avx512_bf16 amx_fp16 avx_ifma avx_vnni_int8 avx_ne_convert";

static struct sigaction next_segv; /* what the program asked for; called for faults that are not CPUID */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) |
                  (1u << 31));                                              /* EBX: AVX512F DQ IFMA PF ER CD BW VL */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 8) | (1u << 11) | (1u << 12) | (1u << 14)); /* ECX: VBMI VBMI2 GFNI VNNI BITALG VPOPCNTDQ */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25)); /* EDX: 4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 FP16 AMX-TILE AMX-INT8 */
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23)); /* EAX: AVX-VNNI AVX512_BF16 AMX-FP16 AVX-IFMA */
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 19));              /* EDX: AVX-VNNI-INT8 AVX-NE-CONVERT AVX10 */
    } else if (leaf == 0xd && sub == 0) {
        r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18)); /* XCR0 states: opmask, ZMM, AMX tiles */
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0; /* AMX tile and AVX10 leaves */
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        uint32_t leaf = (uint32_t)regs[REG_RAX], sub = (uint32_t)regs[REG_RCX], r[4];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        regs[REG_RAX] = r[0];
        regs[REG_RBX] = r[1];
        regs[REG_RCX] = r[2];
        regs[REG_RDX] = r[3];
        regs[REG_RIP] += 2;
        return;
    }
    if (next_segv.sa_flags & SA_SIGINFO && next_segv.sa_sigaction) {
        next_segv.sa_sigaction(sig, info, context);
    } else if (next_segv.sa_handler != SIG_DFL && next_segv.sa_handler != SIG_IGN) {
        next_segv.sa_handler(sig);
    } else { /* a real crash: die of it as the program would have */
        struct sigaction dfl = {0};
        dfl.sa_handler = SIG_DFL;
        real_sigaction(SIGSEGV, &dfl, NULL);
    }
}

/* Keep our handler first: a program installing its own SIGSEGV handler gets it called through ours. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = next_segv;
    if (act) next_segv = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act = {0}, old;
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void start(void) {
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    struct sigaction act = {0};
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    next_segv.sa_handler = SIG_DFL;
    if (real_sigaction(SIGSEGV, &act, NULL) != 0 || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid_mask: CPUID faulting is not available here (needs Linux and the cpuid_fault "
                        "flag in /proc/cpuinfo); refusing to run unmasked\n");
        _exit(97);
    }
}
