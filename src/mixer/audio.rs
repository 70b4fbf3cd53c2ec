//! The room's audio mixer: one tokio task that decodes every publisher's Opus, sums one 20 ms
//! frame per tick, and encodes one mix per distinct audience: each publisher who is speaking
//! gets the mix without their own voice (mix-minus, its own encoder); everyone else (silent
//! publishers, viewers, video-only publishers) shares a single encode of the full mix, which
//! for a silent publisher is the same sound.
//!
//! It never blocks on a listener: a full listener queue drops that listener's frame.

use crate::ids::SessionId;
use crate::media::{EncodedFrame, RtpSink, SharedRtpSink, parse_rtp};
use crate::mixer::dsp::{
    FRAME_SAMPLES, SAMPLE_RATE, SeqTracker, SeqVerdict, SourceFifo, VoiceActivity, mix_minus, rms,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Packets from all sources of a room waiting for the mixer (about 1 s of 25 speakers). When
/// full, new packets are dropped; the decoder conceals the loss.
pub const PACKET_QUEUE: usize = 1024;
/// Control messages (joins, leaves): senders wait when it is full.
pub const CONTROL_QUEUE: usize = 64;
/// Encoded frames per listener (320 ms). When full, the listener misses that frame.
pub const LISTENER_QUEUE: usize = 16;
/// Lost packets concealed at most per gap; longer gaps are silence.
const MAX_CONCEALED: u16 = 3;
const FRAME: Duration = Duration::from_millis(20);
/// Largest Opus packet: 120 ms at 48 kHz.
const MAX_DECODED: usize = 5760;

enum Control {
    AddSource(SessionId),
    RemoveSource(SessionId),
    AddListener {
        id: SessionId,
        tx: mpsc::Sender<EncodedFrame>,
    },
    RemoveListener(SessionId),
    /// The loss a listener's receiver reports (percent).
    ListenerLoss {
        id: SessionId,
        percent: u8,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("the audio mixer has stopped")]
    Stopped,
}

/// Owned by the room actor. Dropping it (or [`shutdown`](Self::shutdown)) ends the task.
pub struct AudioMixerHandle {
    control: mpsc::Sender<Control>,
    packets: mpsc::Sender<(SessionId, Bytes)>,
    task: JoinHandle<()>,
}

struct SourceSink {
    id: SessionId,
    packets: mpsc::Sender<(SessionId, Bytes)>,
}

impl RtpSink for SourceSink {
    fn push_rtp(&self, packet: Bytes) {
        if self.packets.try_send((self.id, packet)).is_err() {
            tracing::trace!(session = %self.id, "audio packet dropped: mixer queue full");
        }
    }
}

/// Speaking changes waiting for the room (each is a flip of one source's state).
pub const SPEAKING_QUEUE: usize = 64;

impl AudioMixerHandle {
    /// `speaking` receives `(source, speaking)` whenever a source starts or stops speaking.
    pub fn spawn(
        bitrate_kbps: u32,
        jitter_ms: u32,
        speaking: mpsc::Sender<(SessionId, bool)>,
    ) -> Self {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (packets, packets_rx) = mpsc::channel(PACKET_QUEUE);
        let target = (SAMPLE_RATE * jitter_ms / 1000) as usize;
        let task = tokio::spawn(run(control_rx, packets_rx, bitrate_kbps, target, speaking));
        Self {
            control,
            packets,
            task,
        }
    }

    /// Registers a publisher and returns where its RTP goes.
    pub async fn add_source(&self, id: SessionId) -> Result<SharedRtpSink, AudioError> {
        self.send(Control::AddSource(id)).await?;
        Ok(Arc::new(SourceSink {
            id,
            packets: self.packets.clone(),
        }))
    }

    pub async fn remove_source(&self, id: SessionId) {
        let _ = self.send(Control::RemoveSource(id)).await;
    }

    /// A listener hears everyone but the source with its own id (if it is one).
    pub async fn add_listener(
        &self,
        id: SessionId,
    ) -> Result<mpsc::Receiver<EncodedFrame>, AudioError> {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        self.send(Control::AddListener { id, tx }).await?;
        Ok(rx)
    }

    pub async fn remove_listener(&self, id: SessionId) {
        let _ = self.send(Control::RemoveListener(id)).await;
    }

    /// The loss (percent) a listener's receiver reports, for the FEC in what it hears. Never
    /// waits: a report dropped when the queue is full is repeated by the next one.
    pub fn set_listener_loss(&self, id: SessionId, percent: u8) {
        let _ = self.control.try_send(Control::ListenerLoss { id, percent });
    }

    async fn send(&self, c: Control) -> Result<(), AudioError> {
        self.control.send(c).await.map_err(|_| AudioError::Stopped)
    }

    pub async fn shutdown(self) {
        drop(self.control);
        drop(self.packets);
        let _ = self.task.await;
    }
}

struct Source {
    decoder: opus::Decoder,
    seq: SeqTracker,
    fifo: SourceFifo,
    frame: Vec<f32>,
    active: bool,
    voice: VoiceActivity,
    speaking: bool,
}

struct Listener {
    tx: mpsc::Sender<EncodedFrame>,
    /// Its own encoder while it is also a source (its mix differs from everyone else's when
    /// it speaks).
    encoder: Option<opus::Encoder>,
    /// Whether the last frame came from `encoder` (false: the shared full mix). Switching
    /// back to the own encoder resets it, so it never continues from stale state.
    own_last: bool,
    /// Packet loss its receiver reports, percent: its encoder adds that much in-band FEC.
    loss: u8,
}

struct Mixer {
    speaking_tx: mpsc::Sender<(SessionId, bool)>,
    bitrate_kbps: u32,
    target: usize,
    sources: HashMap<SessionId, Source>,
    listeners: HashMap<SessionId, Listener>,
    full_encoder: Option<opus::Encoder>,
    /// The worst loss among the listeners of the shared full mix (its FEC is sized for it).
    full_loss: u8,
    full: Vec<f32>,
    out: Vec<f32>,
    decoded: Vec<f32>,
    encoded: Vec<u8>,
}

/// Every mix carries Opus in-band FEC, sized by the loss its receivers report: at 0 % it
/// costs nothing (the encoder adds none), at 20 % a lost packet is rebuilt from the next one
/// unless both are lost.
fn new_encoder(bitrate_kbps: u32, loss: u8) -> Result<opus::Encoder, opus::Error> {
    let mut e = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
    e.set_bitrate(opus::Bitrate::Bits(bitrate_kbps as i32 * 1000))?;
    e.set_complexity(5)?;
    e.set_inband_fec(true)?;
    e.set_packet_loss_perc(loss.into())?;
    Ok(e)
}

/// FEC is sized for at most this much loss (Opus takes 0..=100; past this it only costs).
const MAX_FEC_LOSS: u8 = 30;

impl Mixer {
    fn handle_control(&mut self, c: Control) {
        match c {
            Control::AddSource(id) => match opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono) {
                Ok(decoder) => {
                    self.sources.insert(
                        id,
                        Source {
                            decoder,
                            seq: SeqTracker::default(),
                            fifo: SourceFifo::new(self.target),
                            frame: vec![0.0; FRAME_SAMPLES],
                            active: false,
                            voice: VoiceActivity::default(),
                            speaking: false,
                        },
                    );
                    if let Some(l) = self.listeners.get_mut(&id) {
                        l.encoder = new_encoder(self.bitrate_kbps, l.loss).ok();
                    }
                }
                Err(e) => tracing::error!(session = %id, "opus decoder: {e}"),
            },
            Control::RemoveSource(id) => {
                self.sources.remove(&id);
            }
            Control::AddListener { id, tx } => {
                let encoder = if self.sources.contains_key(&id) {
                    new_encoder(self.bitrate_kbps, 0)
                        .map_err(|e| tracing::error!(session = %id, "opus encoder: {e}"))
                        .ok()
                } else {
                    None
                };
                self.listeners.insert(
                    id,
                    Listener {
                        tx,
                        encoder,
                        own_last: false,
                        loss: 0,
                    },
                );
            }
            Control::RemoveListener(id) => {
                self.listeners.remove(&id);
                self.update_full_loss();
            }
            Control::ListenerLoss { id, percent } => {
                let percent = percent.min(MAX_FEC_LOSS);
                if let Some(l) = self.listeners.get_mut(&id) {
                    l.loss = percent;
                    if let Some(e) = l.encoder.as_mut() {
                        let _ = e.set_packet_loss_perc(percent.into());
                    }
                }
                self.update_full_loss();
            }
        }
    }

    /// The shared mix's FEC follows its worst-off listener (a little more bitrate in FEC
    /// for everyone, rather than one more encoder per lossy receiver).
    fn update_full_loss(&mut self) {
        let worst = self.listeners.values().map(|l| l.loss).max().unwrap_or(0);
        if worst != self.full_loss {
            self.full_loss = worst;
            if let Some(e) = self.full_encoder.as_mut() {
                let _ = e.set_packet_loss_perc(worst.into());
            }
        }
    }

    fn handle_packet(&mut self, id: SessionId, packet: &[u8]) {
        let Some(source) = self.sources.get_mut(&id) else {
            return;
        };
        let Some(rtp) = parse_rtp(packet) else {
            tracing::trace!(session = %id, "malformed audio RTP dropped");
            return;
        };
        match source.seq.handle(rtp.sequence) {
            SeqVerdict::Late => return,
            SeqVerdict::Gap(n) => {
                for _ in 0..n.min(MAX_CONCEALED) {
                    let buf = &mut self.decoded[..FRAME_SAMPLES];
                    if let Ok(got) = source.decoder.decode_float(&[], buf, false) {
                        source.fifo.push(&buf[..got]);
                    }
                }
            }
            SeqVerdict::InOrder => {}
        }
        if rtp.payload.is_empty() {
            return;
        }
        match source
            .decoder
            .decode_float(rtp.payload, &mut self.decoded, false)
        {
            Ok(got) => source.fifo.push(&self.decoded[..got]),
            Err(e) => tracing::trace!(session = %id, "opus decode: {e}"),
        }
    }

    fn tick(&mut self) {
        self.full.fill(0.0);
        for (id, s) in self.sources.iter_mut() {
            s.active = s.fifo.pop_frame(&mut s.frame);
            let was = s.speaking;
            s.speaking = s.voice.handle_frame(s.active.then(|| rms(&s.frame)));
            if s.speaking != was {
                let _ = self.speaking_tx.try_send((*id, s.speaking));
            }
            if s.active {
                for (f, x) in self.full.iter_mut().zip(&s.frame) {
                    *f += x;
                }
            }
        }
        // The full mix is one frame shared by every listener who gets it (its RTP payload too).
        let mut shared: Option<EncodedFrame> = None;
        for (id, l) in self.listeners.iter_mut() {
            let speaking = self.sources.get(id).is_some_and(|s| s.speaking);
            let own_encoder = l.encoder.as_mut().filter(|_| speaking);
            if own_encoder.is_none() {
                l.own_last = false;
            }
            let frame = if let Some(enc) = own_encoder {
                if !l.own_last {
                    let _ = enc.reset_state();
                    l.own_last = true;
                }
                let own = self
                    .sources
                    .get(id)
                    .filter(|s| s.active)
                    .map(|s| s.frame.as_slice());
                mix_minus(&self.full, own, &mut self.out);
                match enc.encode_float(&self.out, &mut self.encoded) {
                    Ok(n) => {
                        EncodedFrame::new(Bytes::copy_from_slice(&self.encoded[..n]), FRAME, true)
                    }
                    Err(e) => {
                        tracing::warn!(session = %id, "opus encode: {e}");
                        continue;
                    }
                }
            } else {
                if shared.is_none() {
                    let enc = match self.full_encoder.as_mut() {
                        Some(e) => e,
                        None => match new_encoder(self.bitrate_kbps, self.full_loss) {
                            Ok(e) => self.full_encoder.insert(e),
                            Err(e) => {
                                tracing::error!("opus encoder: {e}");
                                return;
                            }
                        },
                    };
                    mix_minus(&self.full, None, &mut self.out);
                    match enc.encode_float(&self.out, &mut self.encoded) {
                        Ok(n) => {
                            shared = Some(EncodedFrame::new(
                                Bytes::copy_from_slice(&self.encoded[..n]),
                                FRAME,
                                true,
                            ))
                        }
                        Err(e) => {
                            tracing::warn!("opus encode: {e}");
                            return;
                        }
                    }
                }
                match &shared {
                    Some(f) => f.clone(),
                    None => continue,
                }
            };
            if l.tx.try_send(frame).is_err() {
                tracing::trace!(session = %id, "audio frame dropped: listener queue full");
            }
        }
    }
}

async fn run(
    mut control: mpsc::Receiver<Control>,
    mut packets: mpsc::Receiver<(SessionId, Bytes)>,
    bitrate_kbps: u32,
    target: usize,
    speaking_tx: mpsc::Sender<(SessionId, bool)>,
) {
    let mut mixer = Mixer {
        speaking_tx,
        bitrate_kbps,
        target,
        sources: HashMap::new(),
        listeners: HashMap::new(),
        full_encoder: None,
        full_loss: 0,
        full: vec![0.0; FRAME_SAMPLES],
        out: vec![0.0; FRAME_SAMPLES],
        decoded: vec![0.0; MAX_DECODED],
        encoded: vec![0; 4000],
    };
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(c) => mixer.handle_control(c),
                None => break,
            },
            Some((id, p)) = packets.recv() => mixer.handle_packet(id, &p),
            _ = tick.tick() => mixer.tick(),
        }
    }
}
