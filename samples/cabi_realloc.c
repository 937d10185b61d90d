#include <stdlib.h>

/* Link this into a C module that becomes a component through the preview 1 adapter
   (build.sh's "component"): the adapter then allocates its state with the module's own
   malloc. Without it, the adapter grows memory for itself, and a module whose malloc grows
   memory afterwards traps in the adapter ("assertion failed at adapter line ...", seen with
   jco 1.35's adapter on wasmtime 50). */
__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    (void)old_size;
    if (new_size == 0) return (void *)align;
    void *grown = realloc(ptr, new_size);
    if (!grown) abort();
    return grown;
}
