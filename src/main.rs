/// jemalloc, not glibc's malloc: see `tikv-jemallocator` in `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    holdfast::cli::main()
}
