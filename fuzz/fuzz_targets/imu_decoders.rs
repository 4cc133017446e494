//! Feeds arbitrary bytes, split at arbitrary points, through both serial IMU decoders: no panic, bounded buffers,
//! garbage never over-counted, every reading finite.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensebind::preprocess::imu::{AccUnit, GyroUnit};
use sensebind::sources::serial::{Decoded, Decoder, LineDecoder, WitMotionDecoder};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the chunk size, the rest is the stream.
    let Some((&split, stream)) = data.split_first() else { return };
    let chunk = usize::from(split).max(1);
    let mut line = LineDecoder::new([0, 1, 2], Some([3, 4, 5]), AccUnit::G, GyroUnit::DegPerSecond);
    let mut wit = WitMotionDecoder::new();
    let (mut a, mut b) = (Decoded::default(), Decoded::default());
    for piece in stream.chunks(chunk) {
        line.feed(piece, &mut a);
        wit.feed(piece, &mut b);
    }
    assert!(a.garbage_bytes <= stream.len() as u64);
    assert!(b.garbage_bytes <= stream.len() as u64);
    assert!(a.readings.iter().chain(&b.readings).flatten().all(|v| v.is_finite()));
});
