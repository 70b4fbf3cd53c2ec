//! The room actor's side of weak links: each receiver's link report goes to its pure tier
//! choice ([`crate::room::tiers`]); the room applies what it decides (another shared encode
//! at its next keyframe, audio only, or a probe) and reports each receiver's quality.

use super::{Participant, Room};
use crate::ids::SessionId;
use crate::media::LinkReport;
use crate::room::tiers::Rung;
use crate::room::{ParticipantStats, QualityInfo};
use std::time::Instant;

impl Room {
    /// A receiver's link report: the tier choice decides, the room applies (another encode,
    /// or a probe).
    pub(super) fn link_report(&mut self, session: SessionId, peer: u64, report: LinkReport) {
        let now = Instant::now();
        let decoded = self.video.decoded_frames(session);
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        if p.peer.peer != peer {
            return; // a replaced peer connection's last words
        }
        p.link = Some(report);
        match decoded {
            Some(n) => {
                p.decodes.push_back((now, n));
                // Reports come every 250 ms: five samples span about a second.
                while p.decodes.len() > 5 {
                    p.decodes.pop_front();
                }
            }
            None => p.decodes.clear(),
        }
        tracing::trace!(
            room = %self.id,
            %session,
            estimate_kbps = (report.estimate_bps / 1000.0).round(),
            delivered_kbps = report.delivered_bps.map(|d| (d / 1000.0).round()),
            loss = report.loss,
            queue_ms = report.queue_ms.round(),
            probe = ?report.probe,
            "link"
        );
        let loss = (report.loss * 100.0).round().clamp(0.0, 100.0) as u8;
        if p.receives_audio && loss != p.fec_loss {
            p.fec_loss = loss;
            self.audio.set_listener_loss(session, loss);
        }
        let (Some(codec), Some(choice)) = (p.receives_video, p.tier.as_mut()) else {
            return;
        };
        choice.handle_report(now, report.estimate_bps / 1000.0, report.probe);
        if let Some(kbps) = choice.poll_probe() {
            tracing::debug!(room = %self.id, %session, kbps, "probing the link");
            p.peer.probe(kbps * 1000.0);
        }
        let Some(rung) = choice.poll_switch() else {
            return;
        };
        tracing::info!(
            room = %self.id,
            %session,
            ?rung,
            estimate_kbps = (report.estimate_bps / 1000.0).round(),
            loss = report.loss,
            "video tier changed"
        );
        match rung {
            Rung::Tier(tier) => match self.video.subscribe(codec, tier) {
                Ok(frames) => {
                    p.peer.switch_video(tier, frames);
                    self.request_keyframe((codec, tier));
                }
                Err(e) => tracing::error!(room = %self.id, %session, tier, "tier encoder: {e}"),
            },
            Rung::AudioOnly => p.peer.pause_video(),
        }
    }

    pub(super) fn stats(&self, p: &Participant) -> ParticipantStats {
        let link = p.link;
        let kbps = |bps: f64| (bps / 1000.0).round() as u32;
        let decode_fps = match (p.decodes.front(), p.decodes.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                let fps = n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64();
                Some((fps * 10.0).round() / 10.0)
            }
            _ => None,
        };
        ParticipantStats {
            received_kbps: link.map(|l| kbps(l.received_bps)),
            sent_kbps: link.map(|l| kbps(l.sent_bps)),
            loss_percent: link.map(|l| (l.loss * 1000.0).round() / 10.0),
            rtt_ms: link.and_then(|l| l.rtt_ms).map(|r| r.round()),
            jitter_ms: link
                .and_then(|l| l.jitter_ms)
                .map(|j| (j * 10.0).round() / 10.0),
            decode_fps,
            tier: match p.tier.as_ref().map(|t| t.current()) {
                Some(Rung::Tier(t)) => Some(t),
                _ => None,
            },
        }
    }

    pub(super) fn quality(&self, p: &Participant) -> Option<QualityInfo> {
        let link = p.link;
        if p.tier.is_none() && link.is_none() {
            return None;
        }
        let ladder = self.registry.config.video.ladder();
        let tier = match p.tier.as_ref().map(|t| t.current()) {
            Some(Rung::Tier(t)) => ladder.get(t).map(|c| (t, *c)),
            _ => None,
        };
        let kbps = |bps: f64| (bps / 1000.0).round() as u32;
        Some(QualityInfo {
            label: match (tier, p.tier.is_some()) {
                (Some((_, c)), _) => format!("{}p", c.height),
                (None, true) => "audio only".into(),
                (None, false) => "no video".into(),
            },
            tier: tier.map(|(t, _)| t),
            width: tier.map(|(_, c)| c.width),
            height: tier.map(|(_, c)| c.height),
            framerate: tier.map(|(_, c)| c.framerate),
            video_kbps: tier.map(|(_, c)| c.bitrate_kbps),
            link_kbps: link.map(|l| kbps(l.estimate_bps)),
            delivered_kbps: link.and_then(|l| l.delivered_bps).map(kbps),
            loss_percent: link.map(|l| (l.loss * 1000.0).round() / 10.0),
            rtt_ms: link.and_then(|l| l.rtt_ms).map(|r| r.round()),
            queue_ms: link.map(|l| l.queue_ms.round()),
        })
    }
}
