//! The controlling terminal of `mu2 run`: raw mode while a terminal process
//! runs, and its window size.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use mu2_protocol::ConsoleSize;
use nix::sys::termios::{self, SetArg, Termios};

/// Puts stdin in raw mode if it is a terminal; restores it on drop.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode { saved: None };
        }
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return RawMode { saved: None };
        }
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// The window size of our stdout's terminal, if it is one.
pub fn window_size() -> Option<ConsoleSize> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    winsize::get(out.as_fd())
}

/// The one ioctl of this crate.
#[allow(unsafe_code)]
mod winsize {
    use std::os::fd::{AsRawFd, BorrowedFd};

    use mu2_protocol::ConsoleSize;

    nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

    pub fn get(fd: BorrowedFd<'_>) -> Option<ConsoleSize> {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass,
        // which points at a live, properly aligned local.
        unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.ok()?;
        (ws.ws_row > 0 && ws.ws_col > 0).then_some(ConsoleSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    }
}
