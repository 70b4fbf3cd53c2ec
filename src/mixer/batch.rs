//! Grouping a publisher's RTP packets by frame (pure decision code; [`super::video`] pushes
//! each group into the participant's `appsrc` as one buffer list).
//!
//! Why: pushed one by one, every packet woke the `appsrc` streaming thread and then the jitter
//! buffer's thread: in a 9-participant room those two accounted for about 2000 of the server's
//! 5100 context switches per second, and the kernel's share of the server's CPU was 0.05 core
//! above the bare pipeline doing the same media work. A frame's packets arrive back to back and
//! the decoder needs all of them anyway, so handing them over together costs no latency.

/// Packets held for one frame at most (a frame this large is passed on in parts).
pub const MAX_FRAME_PACKETS: usize = 256;

#[derive(Debug)]
pub struct FrameBatch<T> {
    timestamp: Option<u32>,
    packets: Vec<T>,
}

impl<T> Default for FrameBatch<T> {
    fn default() -> Self {
        Self {
            timestamp: None,
            packets: Vec::new(),
        }
    }
}

impl<T> FrameBatch<T> {
    /// Takes a packet with its RTP timestamp and marker bit; returns the groups ready to go, in
    /// order: a frame whose marker packet never came (a packet of another timestamp arrived),
    /// then this packet's frame if it is complete (marker set) or has grown too large.
    pub fn push(&mut self, packet: T, timestamp: u32, marker: bool) -> Vec<Vec<T>> {
        let mut ready = Vec::new();
        if self.timestamp.is_some_and(|t| t != timestamp) && !self.packets.is_empty() {
            ready.push(std::mem::take(&mut self.packets));
        }
        self.timestamp = Some(timestamp);
        self.packets.push(packet);
        if marker || self.packets.len() >= MAX_FRAME_PACKETS {
            ready.push(std::mem::take(&mut self.packets));
            self.timestamp = None;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_goes_when_its_marker_packet_arrives() {
        let mut b = FrameBatch::default();
        assert!(b.push(1, 3000, false).is_empty());
        assert!(b.push(2, 3000, false).is_empty());
        assert_eq!(b.push(3, 3000, true), vec![vec![1, 2, 3]]);
        assert_eq!(b.push(4, 6000, true), vec![vec![4]], "a one-packet frame");
    }

    /// The marker packet is lost: the frame goes as soon as the next frame begins, which is
    /// when the depayloader would have noticed the gap anyway.
    #[test]
    fn a_frame_without_its_marker_goes_when_the_next_begins() {
        let mut b = FrameBatch::default();
        b.push(1, 3000, false);
        b.push(2, 3000, false);
        assert_eq!(b.push(3, 6000, false), vec![vec![1, 2]]);
        assert_eq!(b.push(4, 6000, true), vec![vec![3, 4]]);
    }

    /// A late packet of an older frame goes on its own, in arrival order: the jitter buffer
    /// puts it back in place.
    #[test]
    fn a_reordered_packet_is_passed_on_in_arrival_order() {
        let mut b = FrameBatch::default();
        b.push(1, 6000, false);
        assert_eq!(b.push(0, 3000, true), vec![vec![1], vec![0]]);
        assert_eq!(b.push(2, 6000, true), vec![vec![2]]);
    }

    #[test]
    fn a_huge_frame_is_passed_on_in_parts() {
        let mut b = FrameBatch::default();
        let mut out = Vec::new();
        for i in 0..MAX_FRAME_PACKETS + 10 {
            out.extend(b.push(i, 3000, i == MAX_FRAME_PACKETS + 9));
        }
        let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_FRAME_PACKETS, 10]);
    }
}
