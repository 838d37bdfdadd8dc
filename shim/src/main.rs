fn main() {
    mu2_shim::shim::main();
}
