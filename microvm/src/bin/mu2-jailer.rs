//! `mu2-jailer`: builds a VMM's jail and runs it there (docs/jailer.md).
//! Started by mu2 with a plan on stdin; not meant to be run by hand.

fn main() {
    mu2_microvm::jail::jailer::main()
}
