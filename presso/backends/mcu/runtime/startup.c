/*
 * Start-up code for Presso's Cortex-M artifacts (MPS2 AN386/AN500, MPS3 AN547 under QEMU).
 *
 * newlib's rdimon start-up (crt0) has no vector table and takes its stack from the
 * semihosting HEAPINFO call, which QEMU answers with its PSRAM, outside the board's SRAM.
 * So the artifact links with -nostartfiles and starts here instead: the vector table at
 * address 0 (initial stack pointer, reset handler), the FPU (and, on the M55, Helium, which
 * shares its enable bits) switched on before any floating-point instruction can run, .data
 * copied from flash and .bss zeroed as the linker script lays them out, then main().
 * Faults print the exception number and the faulting PC through semihosting and stop QEMU
 * with a non-zero status instead of spinning until the host's timeout.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __stack_top, __stack_limit;
extern uint32_t __model_data_start__, __model_data_end__, __model_data_load__;
extern uint32_t __data_start__, __data_end__, __data_load__;
extern uint32_t __model_bss_start__, __model_bss_end__, __bss_start__, __bss_end__;

extern void initialise_monitor_handles(void);
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void) __attribute__((weak, alias("Fault_Handler")));

__attribute__((section(".vectors"), used)) const void *const presso_vectors[16] = {
    &__stack_top,            /* initial SP */
    (const void *)Reset_Handler,
    (const void *)Fault_Handler, /* NMI */
    (const void *)Fault_Handler, /* HardFault */
    (const void *)Fault_Handler, /* MemManage */
    (const void *)Fault_Handler, /* BusFault */
    (const void *)Fault_Handler, /* UsageFault */
    (const void *)Fault_Handler, /* SecureFault (v8-M) */
    0, 0, 0,
    (const void *)Fault_Handler, /* SVCall */
    (const void *)Fault_Handler, /* DebugMonitor */
    0,
    (const void *)Fault_Handler, /* PendSV */
    (const void *)SysTick_Handler,
};

static void copy_words(uint32_t *dst, const uint32_t *end, const uint32_t *src) {
    while (dst < end) *dst++ = *src++;
}

static void zero_words(uint32_t *dst, const uint32_t *end) {
    while (dst < end) *dst++ = 0;
}

void Reset_Handler(void) {
    /* CPACR: full access to CP10/CP11 (the FPU; on v8.1-M also MVE), before anything else */
    __asm volatile(
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n" ::: "r0", "r1", "memory");
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
    /* v8-M checks the stack limit in hardware: an overflow is a UsageFault, not silent corruption */
    __asm volatile("msr msplim, %0" : : "r"(&__stack_limit));
#endif
    copy_words(&__model_data_start__, &__model_data_end__, &__model_data_load__);
    copy_words(&__data_start__, &__data_end__, &__data_load__);
    zero_words(&__model_bss_start__, &__model_bss_end__);
    zero_words(&__bss_start__, &__bss_end__);
    initialise_monitor_handles();
    exit(main());
}

/* -nostartfiles leaves out crti.o; the harness has no static constructors, but newlib's
   exit() still calls _fini. */
void _init(void) {}
void _fini(void) {}

static int semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static char *put_hex(char *p, uint32_t value) {
    for (int shift = 28; shift >= 0; shift -= 4) *p++ = "0123456789abcdef"[(value >> shift) & 0xF];
    return p;
}

void Fault_Handler(void) {
    uint32_t ipsr, msp;
    __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
    __asm volatile("mrs %0, msp" : "=r"(msp));
    static char message[64];
    static const char head[] = "presso: fault: exception 0x";
    char *p = message;
    for (const char *h = head; *h; h++) *p++ = *h;
    p = put_hex(p, ipsr & 0x1FF);
    static const char pc[] = " at pc 0x";
    for (const char *h = pc; *h; h++) *p++ = *h;
    p = put_hex(p, ((const uint32_t *)msp)[6]); /* the stacked PC of the exception frame */
    *p++ = '\n';
    *p = 0;
    semihost(0x04, message);   /* SYS_WRITE0 */
    semihost(0x18, (const void *)0x20023); /* SYS_EXIT, ADP_Stopped_RunTimeErrorUnknown: QEMU exits 1 */
    for (;;) {
    }
}
