//! Every guest→host message, decoded from an arbitrary frame stream through
//! the generic entry point the host uses (`read_msg::<GuestMsg>`), so new
//! messages are covered as they are added. What decodes re-encodes to
//! itself, and no text in it carries a control character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mu2_protocol::{read_msg, GuestMsg, Wire};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(msg)) = read_msg::<_, GuestMsg>(&mut r) {
        if let GuestMsg::StartFailed { message, .. } = &msg {
            assert!(
                message
                    .chars()
                    .all(|c| c == '\n' || c == '\t' || !c.is_control()),
                "{message:?}"
            );
        }
        let bytes = msg.encode().expect("a decoded message encodes");
        assert_eq!(GuestMsg::decode(&bytes).expect("and decodes again"), msg);
    }
    let _ = GuestMsg::decode(data);
});
