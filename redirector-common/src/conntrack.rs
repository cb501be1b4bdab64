//! The TCP state machine of a tracked flow, as a pure function shared with the kernel.
//!
//! It records what the flow's packets said (handshake, FINs) for observability and for
//! the timeouts that apply where the kernel cannot say whether a connection is still
//! open. It never ends a flow: the endpoints' own TCP stacks judge every segment (a RST
//! only at the exact sequence, RFC 5961), and an entry is removed when the kernel no
//! longer holds its connection. We never drop packets.

/// Client SYN seen, waiting for the server's SYN-ACK.
pub const STATE_SYN_SENT: u8 = 1;
/// Server SYN-ACK seen, waiting for the client's ACK.
pub const STATE_SYN_RECV: u8 = 2;
/// Three-way handshake complete.
pub const STATE_ESTABLISHED: u8 = 3;
/// One side sent FIN.
pub const STATE_FIN_WAIT: u8 = 4;
/// Both sides sent FIN; the entry lingers briefly for retransmissions and final ACKs.
pub const STATE_CLOSING: u8 = 5;

/// Stable lower-case name of a `STATE_*` value (used in output and JSON).
pub const fn state_name(state: u8) -> &'static str {
    match state {
        STATE_SYN_SENT => "syn_sent",
        STATE_SYN_RECV => "syn_recv",
        STATE_ESTABLISHED => "established",
        STATE_FIN_WAIT => "fin_wait",
        STATE_CLOSING => "closing",
        _ => "unknown",
    }
}

/// FIN seen from the client.
pub const FIN_CLIENT: u8 = 1;
/// FIN seen from the server.
pub const FIN_SERVER: u8 = 2;

/// TCP header flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Which way a packet travels relative to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → server (ingress on the redirecting host).
    ToServer,
    /// Server → client (egress).
    ToClient,
}

/// What to do with a flow entry after a packet was rewritten. There is no "remove": a
/// segment cannot prove that its connection ended (a blind RST or FIN looks the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    Keep,
    /// Store the new state and FIN bits.
    Update {
        /// New `STATE_*`.
        state: u8,
        /// New FIN bits.
        fin_flags: u8,
    },
}

/// Returns true if a packet with these flags opens a new connection (SYN without ACK).
#[inline(always)]
pub const fn is_initial_syn(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN
}

/// Returns true if an entry in `state` may be replaced by a new SYN for the same tuple
/// (port reuse after close) rather than treated as a retransmitted SYN.
#[inline(always)]
pub const fn is_reusable(state: u8) -> bool {
    state == STATE_FIN_WAIT || state == STATE_CLOSING
}

/// Computes the next state of a flow after a packet with TCP `flags` went `dir`. A RST
/// changes nothing: only the endpoint can tell whether it was at the exact sequence.
#[inline(always)]
pub fn next(state: u8, fin_flags: u8, dir: Direction, flags: u8) -> Transition {
    if flags & tcp_flags::RST != 0 {
        return Transition::Keep;
    }
    let mut new_fin = fin_flags;
    if flags & tcp_flags::FIN != 0 {
        new_fin |= match dir {
            Direction::ToServer => FIN_CLIENT,
            Direction::ToClient => FIN_SERVER,
        };
    }
    let new_state = if new_fin == FIN_CLIENT | FIN_SERVER {
        STATE_CLOSING
    } else if new_fin != 0 {
        STATE_FIN_WAIT
    } else {
        let syn = flags & tcp_flags::SYN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        match (state, dir) {
            (STATE_SYN_SENT, Direction::ToClient) if syn && ack => STATE_SYN_RECV,
            (STATE_SYN_RECV, Direction::ToServer) if ack && !syn => STATE_ESTABLISHED,
            // Simultaneous open or a lost SYN-ACK: data both ways means established.
            (STATE_SYN_SENT, Direction::ToClient) if ack => STATE_ESTABLISHED,
            _ => state,
        }
    };
    if new_state == state && new_fin == fin_flags {
        Transition::Keep
    } else {
        Transition::Update {
            state: new_state,
            fin_flags: new_fin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{tcp_flags::*, Direction::*, *};

    fn step(state: u8, fin: u8, dir: Direction, flags: u8) -> (u8, u8) {
        match next(state, fin, dir, flags) {
            Transition::Keep => (state, fin),
            Transition::Update { state, fin_flags } => (state, fin_flags),
        }
    }

    #[test]
    fn handshake_data_and_orderly_close() {
        let mut s = (STATE_SYN_SENT, 0);
        s = step(s.0, s.1, ToClient, SYN | ACK);
        assert_eq!(s.0, STATE_SYN_RECV);
        s = step(s.0, s.1, ToServer, ACK);
        assert_eq!(s.0, STATE_ESTABLISHED);
        s = step(s.0, s.1, ToClient, ACK);
        assert_eq!(s.0, STATE_ESTABLISHED);
        s = step(s.0, s.1, ToServer, FIN | ACK);
        assert_eq!(s, (STATE_FIN_WAIT, FIN_CLIENT));
        s = step(s.0, s.1, ToClient, FIN | ACK);
        assert_eq!(s, (STATE_CLOSING, FIN_CLIENT | FIN_SERVER));
        assert_eq!(next(s.0, s.1, ToServer, ACK), Transition::Keep);
    }

    #[test]
    fn rst_changes_nothing_in_any_state_and_direction() {
        for st in [
            STATE_SYN_SENT,
            STATE_SYN_RECV,
            STATE_ESTABLISHED,
            STATE_FIN_WAIT,
            STATE_CLOSING,
        ] {
            assert_eq!(next(st, 0, ToServer, RST), Transition::Keep);
            assert_eq!(next(st, 0, ToClient, RST | ACK), Transition::Keep);
            assert_eq!(next(st, FIN_CLIENT, ToServer, RST | FIN), Transition::Keep);
        }
    }

    #[test]
    fn retransmitted_syn_keeps_state() {
        assert_eq!(next(STATE_SYN_SENT, 0, ToServer, SYN), Transition::Keep);
    }

    #[test]
    fn initial_syn_detection() {
        assert!(is_initial_syn(SYN));
        assert!(!is_initial_syn(SYN | ACK));
        assert!(!is_initial_syn(SYN | RST));
        assert!(!is_initial_syn(ACK));
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(STATE_SYN_SENT), "syn_sent");
        assert_eq!(state_name(STATE_ESTABLISHED), "established");
        assert_eq!(state_name(STATE_CLOSING), "closing");
        assert_eq!(state_name(0), "unknown");
    }

    #[test]
    fn closed_states_are_reusable() {
        assert!(is_reusable(STATE_CLOSING));
        assert!(is_reusable(STATE_FIN_WAIT));
        assert!(!is_reusable(STATE_ESTABLISHED));
        assert!(!is_reusable(STATE_SYN_SENT));
    }
}
