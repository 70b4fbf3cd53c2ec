//! The room's audio mixer: one tokio task that sums one 20 ms frame per tick from at most
//! `max_speakers` sources (the loudest, chosen by [`crate::room::speakers`]) and encodes one
//! mix per distinct audience: each publisher whose voice is in the mix gets the mix without
//! it (mix-minus, its own encoder); everyone else (silent publishers, viewers, video-only
//! publishers) shares a single encode of the full mix, which for them is the same sound.
//!
//! Levels come from the RFC 6464 audio-level header extension browsers put in every packet,
//! so a source outside the mix is **not decoded**: its packets only update its level and
//! sequence number. A source that sends no level is decoded to measure it. Leaving the mix,
//! and entering it mid-sound (replacing a quieter voice), fades over two frames
//! ([`dsp::fade`]); a voice that starts after silence enters from its onset at full gain.
//!
//! Sources and listeners may speak G.711 (PCMU, PCMA) instead of Opus: a G.711 packet is
//! decoded and upsampled into the 48 kHz mix ([`super::g711`]), and a G.711 listener's mix is
//! downsampled and encoded back; the full mix is encoded once per codec some listener needs.
//!
//! It never blocks on a listener: a full listener queue drops that listener's frame.

use crate::ids::SessionId;
use crate::media::{AudioCodec, EncodedFrame, RtpSink, SharedRtpSink, parse_rtp};
use crate::mixer::dsp::{
    self, FRAME_SAMPLES, SAMPLE_RATE, SeqTracker, SeqVerdict, SourceFifo, VoiceActivity, mix_minus,
    rms,
};
use crate::mixer::g711::{self, Downsampler, Law, Upsampler};
use crate::room::speakers::{SILENCE_DBOV, SpeakerSelector, rms_dbov};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Packets from all sources of a room waiting for the mixer (about 400 ms of a hundred
/// publishers). When full, new packets are dropped; the decoder conceals the loss.
pub const PACKET_QUEUE: usize = 2048;
/// Control messages (joins, leaves): senders wait when it is full.
pub const CONTROL_QUEUE: usize = 64;
/// Encoded frames per listener (320 ms). When full, the listener misses that frame.
pub const LISTENER_QUEUE: usize = 16;
/// Lost packets concealed at most per gap; longer gaps are silence.
const MAX_CONCEALED: u16 = 3;
/// The latest packets of a source outside the mix, kept undecoded: when it enters, those
/// that were not silent are decoded first, so the syllable that brought it in is heard (and
/// silence before it adds no delay).
const PENDING_PACKETS: usize = 2;
const FRAME: Duration = Duration::from_millis(20);
/// Audio codecs a mix is encoded in ([`AudioCodec`] as an index: Opus, PCMU, PCMA). The
/// shared full mix has one encoder and one frame per tick for each.
const CODECS: usize = 3;
const _: () = assert!(AudioCodec::Pcma as usize == CODECS - 1);
/// Largest Opus packet: 120 ms at 48 kHz.
const MAX_DECODED: usize = 5760;

enum Control {
    AddSource(SessionId),
    RemoveSource(SessionId),
    AddListener {
        id: SessionId,
        codec: AudioCodec,
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
    packets: mpsc::Sender<Packet>,
    decoding: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// One audio packet from a source, with the level its sender measured (RFC 6464: -dBov).
type Packet = (SessionId, Bytes, Option<u8>);

struct SourceSink {
    id: SessionId,
    packets: mpsc::Sender<Packet>,
}

impl RtpSink for SourceSink {
    fn push_rtp(&self, packet: Bytes) {
        self.push_audio(packet, None);
    }

    fn push_audio(&self, packet: Bytes, level: Option<u8>) {
        if self.packets.try_send((self.id, packet, level)).is_err() {
            tracing::trace!(session = %self.id, "audio packet dropped: mixer queue full");
        }
    }
}

/// What the mixer tells the room: a source started or stopped speaking, or entered or left
/// the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioEvent {
    Speaking(SessionId, bool),
    Mixed(SessionId, bool),
}

/// Audio events waiting for the room (each is a flip of one source's state; a hundred
/// publishers starting at once fit). When full, a flip is lost and the next one corrects it.
pub const AUDIO_EVENT_QUEUE: usize = 256;

/// What the mixer does, for the room's info and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioSettings {
    pub bitrate_kbps: u32,
    pub jitter_ms: u32,
    /// Sources in the mix at most.
    pub max_speakers: usize,
}

impl AudioMixerHandle {
    /// `events` receives every speaking and mix change of a source.
    pub fn spawn(settings: AudioSettings, events: mpsc::Sender<AudioEvent>) -> Self {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (packets, packets_rx) = mpsc::channel(PACKET_QUEUE);
        let decoding = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            control_rx,
            packets_rx,
            settings,
            events,
            Arc::clone(&decoding),
        ));
        Self {
            control,
            packets,
            decoding,
            task,
        }
    }

    /// Sources whose packets are being decoded now (those in the mix, fading out, or sending
    /// no level).
    pub fn decoding(&self) -> usize {
        self.decoding.load(Ordering::Relaxed)
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

    /// A listener hears everyone but the source with its own id (if it is one), encoded
    /// as `codec`.
    pub async fn add_listener(
        &self,
        id: SessionId,
        codec: AudioCodec,
    ) -> Result<mpsc::Receiver<EncodedFrame>, AudioError> {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        self.send(Control::AddListener { id, codec, tx }).await?;
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

/// Decodes one source's packets into 48 kHz, each by its payload type: G.711's are static
/// (0 PCMU, 8 PCMA), anything else is Opus, the one dynamic audio codec Mixdown negotiates.
struct SourceDecoder {
    opus: opus::Decoder,
    /// The G.711 law of the last G.711 packet, and the upsampler that carries on across them.
    g711: Option<(Law, Upsampler)>,
    /// The codec of the last packet, for concealment.
    last: AudioCodec,
    pcm8k: Vec<f32>,
    pcm48k: Vec<f32>,
}

impl SourceDecoder {
    fn new() -> Result<Self, opus::Error> {
        Ok(Self {
            opus: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            g711: None,
            last: AudioCodec::Opus,
            pcm8k: Vec::with_capacity(FRAME_SAMPLES),
            pcm48k: Vec::with_capacity(MAX_DECODED),
        })
    }

    /// Decodes one packet's payload into `out`; the number of samples written.
    fn decode(&mut self, payload_type: u8, payload: &[u8], out: &mut [f32]) -> Option<usize> {
        self.last = AudioCodec::from_payload_type(payload_type);
        let Some(law) = Law::from_payload_type(payload_type) else {
            return self
                .opus
                .decode_float(payload, out, false)
                .map_err(|e| tracing::trace!("opus decode: {e}"))
                .ok();
        };
        self.pcm8k.clear();
        // At most what fits: 120 ms, as for Opus.
        let take = payload.len().min(out.len() / g711::RATIO);
        g711::decode(law, &payload[..take], &mut self.pcm8k);
        Some(self.upsample(law, out))
    }

    /// A lost packet: Opus conceals it; G.711 has no concealment, so 20 ms of silence
    /// (through the upsampler, which ends the last sound smoothly).
    fn conceal(&mut self, out: &mut [f32]) -> Option<usize> {
        match (self.last, &self.g711) {
            (AudioCodec::Opus, _) | (_, None) => self.opus.decode_float(&[], out, false).ok(),
            (_, Some((law, _))) => {
                let law = *law;
                self.pcm8k.clear();
                self.pcm8k.resize(FRAME_SAMPLES / g711::RATIO, 0.0);
                Some(self.upsample(law, out))
            }
        }
    }

    fn upsample(&mut self, law: Law, out: &mut [f32]) -> usize {
        let up = match &mut self.g711 {
            Some((l, up)) if *l == law => up,
            slot => &mut slot.insert((law, Upsampler::new())).1,
        };
        self.pcm48k.clear();
        up.process(&self.pcm8k, &mut self.pcm48k);
        let n = self.pcm48k.len().min(out.len());
        out[..n].copy_from_slice(&self.pcm48k[..n]);
        n
    }

    fn reset(&mut self) {
        let _ = self.opus.reset_state();
        if let Some((_, up)) = self.g711.as_mut() {
            up.reset();
        }
    }
}

/// Encodes a listener's (or the shared) mix in its codec.
enum MixEncoder {
    Opus(opus::Encoder),
    G711 {
        law: Law,
        down: Downsampler,
        pcm8k: Vec<f32>,
        bytes: Vec<u8>,
    },
}

impl MixEncoder {
    fn new(codec: AudioCodec, bitrate_kbps: u32, loss: u8) -> Result<Self, opus::Error> {
        let law = match codec {
            AudioCodec::Opus => return new_encoder(bitrate_kbps, loss).map(MixEncoder::Opus),
            AudioCodec::Pcmu => Law::Mu,
            AudioCodec::Pcma => Law::A,
        };
        Ok(MixEncoder::G711 {
            law,
            down: Downsampler::new(),
            pcm8k: Vec::with_capacity(FRAME_SAMPLES / g711::RATIO),
            bytes: Vec::with_capacity(FRAME_SAMPLES / g711::RATIO),
        })
    }

    /// One 20 ms frame of 48 kHz audio, encoded.
    fn encode(&mut self, pcm: &[f32], buf: &mut [u8]) -> Result<Bytes, String> {
        match self {
            MixEncoder::Opus(e) => {
                let n = e.encode_float(pcm, buf).map_err(|e| e.to_string())?;
                Ok(Bytes::copy_from_slice(&buf[..n]))
            }
            MixEncoder::G711 {
                law,
                down,
                pcm8k,
                bytes,
            } => {
                pcm8k.clear();
                down.process(pcm, pcm8k);
                bytes.clear();
                g711::encode(*law, pcm8k, bytes);
                Ok(Bytes::copy_from_slice(bytes))
            }
        }
    }

    fn reset(&mut self) {
        match self {
            MixEncoder::Opus(e) => {
                let _ = e.reset_state();
            }
            MixEncoder::G711 { down, .. } => down.reset(),
        }
    }

    /// In-band FEC for `percent` loss (Opus; G.711 has none).
    fn set_loss(&mut self, percent: u8) {
        if let MixEncoder::Opus(e) = self {
            let _ = e.set_packet_loss_perc(percent.into());
        }
    }
}

struct Source {
    decoder: SourceDecoder,
    seq: SeqTracker,
    fifo: SourceFifo,
    /// This tick's frame, scaled by the source's gain.
    frame: Vec<f32>,
    active: bool,
    voice: VoiceActivity,
    speaking: bool,
    /// Its packets carry the sender's level: it is decoded only while in the mix.
    has_level: bool,
    /// Its packets are being decoded.
    decoding: bool,
    /// Its gain in the mix now, and where the gain is going (1 in the mix, 0 out).
    gain: f32,
    target: f32,
    /// The latest level reading (RMS) since the last tick, for voice activity.
    reading: Option<f32>,
    /// Its latest packets while not decoded, with their level (at most [`PENDING_PACKETS`]).
    pending: std::collections::VecDeque<(Bytes, f32)>,
}

impl Source {
    /// Decoded or not, its audio counts in the mix.
    fn audible(&self) -> bool {
        self.gain > 0.0 || self.target > 0.0
    }
}

struct Listener {
    tx: mpsc::Sender<EncodedFrame>,
    codec: AudioCodec,
    /// Its own encoder while it is also a source (its mix differs from everyone else's when
    /// it speaks).
    encoder: Option<MixEncoder>,
    /// Whether the last frame came from `encoder` (false: the shared full mix). Switching
    /// back to the own encoder resets it, so it never continues from stale state.
    own_last: bool,
    /// Packet loss its receiver reports, percent: its encoder adds that much in-band FEC.
    loss: u8,
}

struct Mixer {
    events: mpsc::Sender<AudioEvent>,
    selector: SpeakerSelector,
    decoding: Arc<AtomicUsize>,
    bitrate_kbps: u32,
    target: usize,
    sources: HashMap<SessionId, Source>,
    listeners: HashMap<SessionId, Listener>,
    /// The shared full mix's encoder per codec.
    full_encoders: [Option<MixEncoder>; CODECS],
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
            Control::AddSource(id) => match SourceDecoder::new() {
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
                            has_level: false,
                            decoding: false,
                            gain: 0.0,
                            target: 0.0,
                            reading: None,
                            pending: std::collections::VecDeque::with_capacity(PENDING_PACKETS),
                        },
                    );
                    self.selector.handle_add(id);
                    if let Some(l) = self.listeners.get_mut(&id) {
                        l.encoder = MixEncoder::new(l.codec, self.bitrate_kbps, l.loss).ok();
                    }
                }
                Err(e) => tracing::error!(session = %id, "opus decoder: {e}"),
            },
            Control::RemoveSource(id) => {
                if let Some(s) = self.sources.remove(&id) {
                    if s.speaking {
                        let _ = self.events.try_send(AudioEvent::Speaking(id, false));
                    }
                    if self.selector.in_mix(id) {
                        let _ = self.events.try_send(AudioEvent::Mixed(id, false));
                    }
                }
                self.selector.handle_remove(id);
            }
            Control::AddListener { id, codec, tx } => {
                let encoder = if self.sources.contains_key(&id) {
                    MixEncoder::new(codec, self.bitrate_kbps, 0)
                        .map_err(|e| tracing::error!(session = %id, "opus encoder: {e}"))
                        .ok()
                } else {
                    None
                };
                self.listeners.insert(
                    id,
                    Listener {
                        tx,
                        codec,
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
                        e.set_loss(percent);
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
            for e in self.full_encoders.iter_mut().flatten() {
                e.set_loss(worst);
            }
        }
    }

    fn handle_packet(&mut self, now: Instant, id: SessionId, packet: Bytes, level: Option<u8>) {
        let Some(source) = self.sources.get_mut(&id) else {
            return;
        };
        let Some(rtp) = parse_rtp(&packet) else {
            tracing::trace!(session = %id, "malformed audio RTP dropped");
            return;
        };
        let verdict = source.seq.handle(rtp.sequence);
        if verdict == SeqVerdict::Late {
            return;
        }
        source.has_level = level.is_some();
        let dbov = level.map(|l| -f32::from(l.min(127)));
        if let Some(dbov) = dbov {
            self.selector.handle_level(now, id, dbov);
            source.reading = Some(10f32.powf(dbov / 20.0));
        }
        // A source with a level outside the mix is not decoded at all; its latest packets
        // wait in case it enters.
        if source.has_level && !source.decoding {
            if source.pending.len() == PENDING_PACKETS {
                source.pending.pop_front();
            }
            source.pending.push_back((packet, dbov.unwrap_or(0.0)));
            return;
        }
        if let SeqVerdict::Gap(n) = verdict {
            for _ in 0..n.min(MAX_CONCEALED) {
                let buf = &mut self.decoded[..FRAME_SAMPLES];
                if let Some(got) = source.decoder.conceal(buf) {
                    source.fifo.push(&buf[..got]);
                }
            }
        }
        if rtp.payload.is_empty() {
            return;
        }
        if let Some(got) = source
            .decoder
            .decode(rtp.payload_type, rtp.payload, &mut self.decoded)
        {
            let pcm = &self.decoded[..got];
            source.fifo.push(pcm);
            if !source.has_level {
                // No level from the sender: measure it here.
                self.selector.handle_level(now, id, rms_dbov(rms(pcm)));
            }
        }
    }

    /// Applies the selector: sources entering the mix start decoding from fresh state and
    /// fade in; leaving ones fade out, then stop decoding.
    fn select(&mut self, now: Instant) {
        if !self.selector.update(now) {
            return;
        }
        for (id, s) in self.sources.iter_mut() {
            let in_mix = self.selector.in_mix(*id);
            let was = s.target > 0.0;
            if in_mix == was {
                continue;
            }
            s.target = if in_mix { 1.0 } else { 0.0 };
            if in_mix && !s.decoding {
                s.decoding = true;
                s.decoder.reset();
                s.fifo.clear();
                // A voice that starts after silence is decoded from its onset, which cannot
                // click: it plays at once. One that was already speaking (it replaces a
                // quieter one) is cut into mid-sound: it fades in.
                let onset = s.pending.front().is_some_and(|(_, db)| *db <= SILENCE_DBOV);
                s.gain = if onset { 1.0 } else { 0.0 };
                // The packets that brought it in, so its first syllable is heard.
                for (p, dbov) in s.pending.drain(..) {
                    if dbov <= SILENCE_DBOV {
                        continue;
                    }
                    let Some(rtp) = parse_rtp(&p).filter(|r| !r.payload.is_empty()) else {
                        continue;
                    };
                    if let Some(got) =
                        s.decoder
                            .decode(rtp.payload_type, rtp.payload, &mut self.decoded)
                    {
                        s.fifo.push(&self.decoded[..got]);
                    }
                }
            }
            let _ = self.events.try_send(AudioEvent::Mixed(*id, in_mix));
            tracing::debug!(session = %id, in_mix, level = ?self.selector.level(*id), "audio mix changed");
        }
    }

    fn tick(&mut self) {
        self.select(Instant::now());
        self.full.fill(0.0);
        let mut decoding = 0;
        for (id, s) in self.sources.iter_mut() {
            s.active = false;
            if s.decoding || !s.has_level {
                decoding += 1;
                s.active = s.fifo.pop_frame(&mut s.frame);
                if !s.has_level && s.active {
                    s.reading = Some(rms(&s.frame));
                }
            }
            let was = s.speaking;
            s.speaking = s.voice.handle_frame(s.reading.take());
            if s.speaking != was {
                let _ = self.events.try_send(AudioEvent::Speaking(*id, s.speaking));
            }
            if s.active {
                dsp::fade(&mut s.frame, &mut s.gain, s.target);
                if s.gain > 0.0 || s.target > 0.0 {
                    for (f, x) in self.full.iter_mut().zip(&s.frame) {
                        *f += x;
                    }
                } else {
                    s.active = false;
                }
            }
            if s.has_level && s.decoding && s.target == 0.0 && s.gain == 0.0 {
                // Faded out: back to reading levels only.
                s.decoding = false;
                s.fifo.clear();
                s.pending.clear();
            }
        }
        self.decoding.store(decoding, Ordering::Relaxed);
        // The full mix is one frame per codec, shared by every listener who gets it in that
        // codec (its RTP payload too).
        let mut shared: [Option<EncodedFrame>; CODECS] = [None, None, None];
        for (id, l) in self.listeners.iter_mut() {
            // Its own voice is in the mix: it needs the mix without it.
            let audible = self.sources.get(id).is_some_and(|s| s.audible());
            let own_encoder = l.encoder.as_mut().filter(|_| audible);
            if own_encoder.is_none() {
                l.own_last = false;
            }
            let frame = if let Some(enc) = own_encoder {
                if !l.own_last {
                    enc.reset();
                    l.own_last = true;
                }
                let own = self
                    .sources
                    .get(id)
                    .filter(|s| s.active)
                    .map(|s| s.frame.as_slice());
                mix_minus(&self.full, own, &mut self.out);
                match enc.encode(&self.out, &mut self.encoded) {
                    Ok(bytes) => EncodedFrame::new(bytes, FRAME, true),
                    Err(e) => {
                        tracing::warn!(session = %id, codec = %l.codec, "audio encode: {e}");
                        continue;
                    }
                }
            } else {
                let k = l.codec as usize;
                if shared[k].is_none() {
                    let enc = match &mut self.full_encoders[k] {
                        Some(e) => e,
                        slot @ None => {
                            match MixEncoder::new(l.codec, self.bitrate_kbps, self.full_loss) {
                                Ok(e) => slot.insert(e),
                                Err(e) => {
                                    tracing::error!("opus encoder: {e}");
                                    continue;
                                }
                            }
                        }
                    };
                    mix_minus(&self.full, None, &mut self.out);
                    match enc.encode(&self.out, &mut self.encoded) {
                        Ok(bytes) => shared[k] = Some(EncodedFrame::new(bytes, FRAME, true)),
                        Err(e) => {
                            tracing::warn!(codec = %l.codec, "audio encode: {e}");
                            continue;
                        }
                    }
                }
                match &shared[k] {
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
    mut packets: mpsc::Receiver<Packet>,
    settings: AudioSettings,
    events: mpsc::Sender<AudioEvent>,
    decoding: Arc<AtomicUsize>,
) {
    let mut mixer = Mixer {
        events,
        selector: SpeakerSelector::new(settings.max_speakers),
        decoding,
        bitrate_kbps: settings.bitrate_kbps,
        target: (SAMPLE_RATE * settings.jitter_ms / 1000) as usize,
        sources: HashMap::new(),
        listeners: HashMap::new(),
        full_encoders: [None, None, None],
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
            Some((id, p, level)) = packets.recv() => {
                mixer.handle_packet(Instant::now(), id, p, level)
            }
            _ = tick.tick() => mixer.tick(),
        }
    }
}
