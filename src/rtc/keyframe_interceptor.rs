//! An interceptor that lets PLI and FIR, reception reports (loss, round trip) and REMB from
//! the remote peer reach the application (the server reads keyframe requests and reports;
//! the load generator, a publisher, obeys keyframe requests and REMB). webrtc-rs's
//! default chain consumes all inbound RTCP; packets this one marks with
//! `Attribute::DeliverToApplication` surface as `TrackLocalEvent::OnRtcpPacket` on the local
//! track, where the session turns them into keyframe requests.

use ::rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use ::rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use ::rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use ::rtc::sansio::Protocol;
use ::rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

pub fn is_keyframe_request(packet: &dyn ::rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

pub(crate) fn is_for_application(packet: &dyn ::rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    is_keyframe_request(packet)
        || any.is::<::rtc::rtcp::receiver_report::ReceiverReport>()
        || any.is::<::rtc::rtcp::sender_report::SenderReport>()
        || any.is::<::rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate>()
}

#[derive(Default)]
pub struct KeyframeRequestForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        // The whole compound packet is marked (nothing is stripped), so interceptors later in
        // the chain still see every report; the driver picks out what it reads itself.
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| is_for_application(p.as_ref()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
