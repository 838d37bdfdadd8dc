//! Every host→guest message as the agent decodes it (`read_msg::<HostMsg>`
//! on an arbitrary frame stream, plus the bare payload). What decodes
//! re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mu2_protocol::{read_msg, HostMsg, Wire};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(msg)) = read_msg::<_, HostMsg>(&mut r) {
        let bytes = msg.encode().expect("a decoded message encodes");
        assert_eq!(HostMsg::decode(&bytes).expect("and decodes again"), msg);
    }
    let _ = HostMsg::decode(data);
});
