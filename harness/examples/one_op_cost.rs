use harness::scenario::decode;
use std::time::Instant;
fn main() {
    let data = [0x08u8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    for hdr in [0u8, 1, 2, 5, 6, 8, 9, 10] {
        let mut d = data;
        d[0] = hdr;
        let s = decode(&d).unwrap();
        let n = 20000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(harness::run(&s, p2m_core::Revision::fixed()));
        }
        println!("{} : {:.1} us/run", s.config_line(), t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
