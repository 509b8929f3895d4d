/*
 * Semihosting test harness for a Presso model library (model.c / model.h).
 *
 * Reads samples from input0.bin, input1.bin, ... (raw tensors in the order and sizes of
 * harness_config.h, one sample after another), runs presso_model_run on each, and appends
 * the outputs to output0.bin, output1.bin, ...: all through semihosting, so the files are the
 * host's (QEMU's working folder). Per sample it prints one line:
 *
 *   presso: sample=N status=S ticks=HI:LO stack=BYTES
 *
 * ticks: SysTick counts (24-bit counter at the CPU clock, wraps counted by its interrupt)
 * around the call; under qemu -icount shift=0 they convert to instructions exactly
 * (presso/backends/mcu/boards.py). stack: the deepest stack the call used, measured by
 * painting the free stack with a pattern before the call and finding the lowest word
 * that changed after it.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "harness_config.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define STACK_PAINT 0x5AA5C33Cu

extern uint32_t __stack_limit, __stack_top;

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

static void systick_start(void) {
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* enable, interrupt on wrap, CPU clock */
    while (SYST_CVR == 0) {
    }
    systick_wraps = 0;
}

static uint64_t systick_now(void) {
    uint32_t wraps, value;
    do { /* a reading of 0 is ambiguous (the wrap interrupt may or may not have run) */
        wraps = systick_wraps;
        value = SYST_CVR;
    } while (value == 0 || wraps != systick_wraps);
    return (uint64_t)wraps * 0x1000000u + (0xFFFFFFu - value);
}

static inline uintptr_t stack_pointer(void) {
    uintptr_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* Paint from the bottom of the stack up to the caller's stack pointer (inlined: no frame of
   its own below that pointer). */
static inline __attribute__((always_inline)) void paint_stack(uintptr_t sp) {
    for (uint32_t *p = &__stack_limit; (uintptr_t)p < sp; p++) *p = STACK_PAINT;
}

static uint32_t stack_used(uintptr_t sp) {
    const uint32_t *p = &__stack_limit;
    while ((uintptr_t)p < sp && *p == STACK_PAINT) p++;
    return (uint32_t)(sp - (uintptr_t)p);
}

static FILE *open_file(const char *kind, unsigned index, const char *mode) {
    char name[32];
    snprintf(name, sizeof name, "%s%u.bin", kind, index);
    FILE *file = fopen(name, mode);
    if (file == NULL) {
        printf("presso: error: cannot open %s\n", name);
        return NULL;
    }
    setvbuf(file, NULL, _IONBF, 0); /* whole tensors in one semihosting call */
    return file;
}

int main(void) {
    FILE *inputs[HARNESS_INPUTS], *outputs[HARNESS_OUTPUTS];
    for (unsigned i = 0; i < HARNESS_INPUTS; i++)
        if ((inputs[i] = open_file("input", i, "rb")) == NULL) return 2;
    for (unsigned i = 0; i < HARNESS_OUTPUTS; i++)
        if ((outputs[i] = open_file("output", i, "wb")) == NULL) return 2;
    systick_start();
    for (unsigned sample = 0;; sample++) {
        size_t got = fread(harness_inputs[0], 1, harness_input_bytes[0], inputs[0]);
        if (got == 0) break;
        if (got != harness_input_bytes[0]) {
            printf("presso: error: input0.bin ends inside sample %u\n", sample);
            return 3;
        }
        for (unsigned i = 1; i < HARNESS_INPUTS; i++) {
            if (fread(harness_inputs[i], 1, harness_input_bytes[i], inputs[i]) != harness_input_bytes[i]) {
                printf("presso: error: input%u.bin ends inside sample %u\n", i, sample);
                return 3;
            }
        }
        uintptr_t sp = stack_pointer();
        paint_stack(sp);
        uint64_t start = systick_now();
        int status = HARNESS_RUN();
        uint64_t ticks = systick_now() - start;
        uint32_t stack = stack_used(sp);
        if (__stack_limit != STACK_PAINT) { /* the lowest word of the stack was written */
            printf("presso: error: the model overflowed the %lu-byte stack the board reserves\n",
                   (unsigned long)((uintptr_t)&__stack_top - (uintptr_t)&__stack_limit));
            return 5;
        }
        for (unsigned i = 0; i < HARNESS_OUTPUTS; i++) {
            if (fwrite(harness_outputs[i], 1, harness_output_bytes[i], outputs[i]) != harness_output_bytes[i]) {
                printf("presso: error: cannot write output%u.bin\n", i);
                return 3;
            }
        }
        printf("presso: sample=%u status=%d ticks=%lu:%lu stack=%lu\n", sample, status,
               (unsigned long)(ticks >> 32), (unsigned long)(ticks & 0xFFFFFFFFu), (unsigned long)stack);
        if (status != 0) return 4;
    }
    for (unsigned i = 0; i < HARNESS_INPUTS; i++) fclose(inputs[i]);
    for (unsigned i = 0; i < HARNESS_OUTPUTS; i++) fclose(outputs[i]);
    return 0;
}
