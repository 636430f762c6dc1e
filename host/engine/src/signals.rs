//! Signal-handler plumbing for the fault handlers of the memory trackers:
//! installing an `SA_SIGINFO` handler, chaining a signal none of our
//! memories claims to the handler installed before ours, and telling a
//! write fault from a read.

/// The signature of an `SA_SIGINFO` handler.
pub(crate) type SigInfoHandler =
    unsafe extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `signal` (on the alternate stack, re-entrant) and
/// returns the handler it replaces, to chain to.
pub(crate) fn install_signal_handler(
    signal: libc::c_int,
    handler: SigInfoHandler,
) -> libc::sigaction {
    // SAFETY: plain sigaction calls with zero-initialized structs.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        let rc = libc::sigaction(signal, &action, &mut previous);
        assert_eq!(rc, 0, "cannot install the handler for signal {signal}");
        previous
    }
}

/// Passes a signal that none of our memories claims to the handler that
/// was installed before ours.
///
/// # Safety
/// Only from a signal handler, with the arguments it received.
pub(crate) unsafe fn chain(
    previous: &libc::sigaction,
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: forwarding to the handler that was installed before ours,
    // with the arguments we were given.
    unsafe {
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(previous.sa_sigaction);
            f(signal, info, context);
        } else if previous.sa_sigaction == libc::SIG_DFL || previous.sa_sigaction == libc::SIG_IGN {
            // Restore the default action; returning re-executes the access,
            // which then terminates the process as it would have.
            libc::sigaction(signal, previous, std::ptr::null_mut());
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(previous.sa_sigaction);
            f(signal);
        }
    }
}

/// Whether the faulting access was a write, when the CPU tells.
#[cfg(target_arch = "x86_64")]
pub(crate) fn is_write(context: *mut libc::c_void) -> Option<bool> {
    if context.is_null() {
        return None;
    }
    // SAFETY: for SA_SIGINFO handlers the third argument is a ucontext_t.
    let context = unsafe { &*(context as *const libc::ucontext_t) };
    // Bit 1 of the page-fault error code: the access was a write.
    Some(context.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn is_write(_context: *mut libc::c_void) -> Option<bool> {
    None
}
