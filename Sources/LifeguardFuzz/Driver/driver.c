#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// SwiftPM links debug executables with `main` aliased to `<module>_main`, which hides libFuzzer's own main;
// this hands control back to libFuzzer. Release links use libFuzzer's main and never call it.
int LifeguardFuzz_main(int argc, char **argv) {
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}
