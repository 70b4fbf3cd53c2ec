//! The room actor's side of the screen. Who is visible is decided by the pure
//! [`VisibleSet`](crate::room::visible::VisibleSet) and where by the pure
//! [`LayoutMode`]; this applies both: a visible publisher whose video has started gets a
//! decoder (its [`VideoGate`] opens, a PLI asks for its first picture, and a name card covers
//! the tile until that picture is decoded), a visible one without video gets a name card, a
//! hidden one gets nothing (its gate drops its packets before any decoder). Every change is
//! re-laid out and sent to clients as layout metadata.

use super::Room;
use crate::ids::SessionId;
use crate::media::{SharedRtpSink, VideoCodec, VideoGate};
use crate::room::layout::{LayoutMode, Tile, publish_cap_kbps};
use crate::room::{LayoutInfo, RoomError};
use crate::signal::{ServerMessage, TileInfo};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// A publisher's video as the room knows it once its track has started.
pub(super) struct VideoInput {
    pub codec: VideoCodec,
    pub payload_type: u8,
    /// Asks the publisher for a keyframe.
    pub pli: mpsc::Sender<()>,
    /// Where the transport pushes its packets: to a decoder while visible, dropped otherwise.
    pub gate: Arc<VideoGate>,
}

impl Room {
    /// Applies what the visible set decides now; re-lays out when it changed.
    pub(super) fn update_visible(&mut self) {
        if self.visible.update(Instant::now()) {
            self.apply_visible();
        }
    }

    /// Gives tiles to the newly visible and takes them from the newly hidden, then re-lays out.
    pub(super) fn apply_visible(&mut self) {
        let want: HashSet<SessionId> = self.visible.visible().iter().copied().collect();
        let hidden: Vec<SessionId> = self.shown.difference(&want).copied().collect();
        for id in hidden {
            self.hide_tile(id);
        }
        // Tiles first, so that a new source starts at its final size.
        self.place();
        let newly: Vec<SessionId> = self
            .visible
            .visible()
            .iter()
            .copied()
            .filter(|id| !self.shown.contains(id))
            .collect();
        for id in newly {
            self.show_tile(id);
        }
        self.relayout();
    }

    /// Takes a participant's tile away: its decoder (or card) goes, its packets are dropped.
    pub(super) fn hide_tile(&mut self, id: SessionId) {
        self.video.remove(id);
        self.shown.remove(&id);
        self.awaiting_first.remove(&id);
        if let Some(v) = self.participants.get(&id).and_then(|p| p.video_in.as_ref()) {
            v.gate.close();
        }
        tracing::debug!(room = %self.id, session = %id, "tile hidden");
    }

    /// Gives a participant a tile: a decoder of its video when it has started (covered by its
    /// name card until the first picture), else a name card.
    pub(super) fn show_tile(&mut self, id: SessionId) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        self.shown.insert(id);
        let name = p.name.clone();
        let muted = p.video_muted;
        let tile = self.tiles.get(&id).copied();
        let decoder = match &p.video_in {
            Some(v) => {
                match self
                    .video
                    .add_video_input(id, v.codec, v.payload_type, v.pli.clone(), tile)
                {
                    Ok(sink) => {
                        v.gate.open(sink);
                        // Its first picture now, not at its next periodic keyframe.
                        let _ = v.pli.try_send(());
                        true
                    }
                    Err(e) => {
                        tracing::error!(room = %self.id, session = %id, "video input: {e}");
                        false
                    }
                }
            }
            None => false,
        };
        if decoder {
            self.awaiting_first.insert(id);
        } else if let Err(e) = self.video.add_placeholder(id, &name, tile) {
            tracing::error!(room = %self.id, session = %id, "placeholder tile: {e}");
        }
        if (decoder || muted)
            && let Err(e) = self.video.show_card(id, &name)
        {
            tracing::error!(room = %self.id, session = %id, "name card: {e}");
        }
        tracing::debug!(room = %self.id, session = %id, decoder, "tile shown");
    }

    /// A publisher's video track started: its packets go through a gate the room controls.
    pub(super) fn video_track_started(
        &mut self,
        session: SessionId,
        codec: VideoCodec,
        payload_type: u8,
        pli: mpsc::Sender<()>,
    ) -> Option<SharedRtpSink> {
        let p = self.participants.get_mut(&session)?;
        if !p.publishes_video {
            return None;
        }
        let max = self.registry.config.limits.max_video_pixels;
        let (registry, room, name) = (Arc::clone(&self.registry), self.id.clone(), p.name.clone());
        let gate = Arc::new(VideoGate::with_limit(codec, max, move |w, h| {
            crate::limits::Counters::bump(&registry.counters.video_pixels);
            tracing::warn!(
                room = %room,
                %session,
                %name,
                width = w,
                height = h,
                max_pixels = max,
                "a publisher's picture is larger than limits.max_video_pixels: its video is dropped"
            );
        }));
        p.video_in = Some(VideoInput {
            codec,
            payload_type,
            pli,
            gate: Arc::clone(&gate),
        });
        p.video_started = true;
        p.publish_cap = None;
        if self.shown.contains(&session) {
            // Its name card gives way to a decoder (in the same tile).
            self.video.hide_card(session);
            self.show_tile(session);
        }
        self.apply_publish_caps();
        Some(gate)
    }

    /// Asks each publisher whose video has started for what its tile needs (a trickle when
    /// off screen), when that changed.
    pub(super) fn apply_publish_caps(&mut self) {
        let v = &self.registry.config.video;
        let (canvas, kbps) = ((v.width, v.height), v.bitrate_kbps);
        for (id, p) in self.participants.iter_mut() {
            if p.video_in.is_none() {
                continue;
            }
            let cap = publish_cap_kbps(self.tiles.get(id).copied(), canvas, kbps);
            if p.publish_cap != Some(cap) {
                p.publish_cap = Some(cap);
                p.peer.cap_publisher(f64::from(cap) * 1000.0);
                tracing::debug!(room = %self.id, session = %id, kbps = cap, "publisher asked to send at most");
            }
        }
    }

    /// A decoder's first picture: the card that covered its tile goes (unless the camera is
    /// stopped, whose card stays).
    pub(super) fn first_frame(&mut self, id: SessionId) {
        if !self.awaiting_first.remove(&id) {
            return;
        }
        if self.participants.get(&id).is_some_and(|p| !p.video_muted) {
            self.video.hide_card(id);
        }
    }

    /// Where each visible participant goes by the current layout (`self.tiles`).
    fn place(&mut self) -> Vec<(SessionId, Tile)> {
        let ids = match self.layout {
            LayoutMode::Speaker => self.visible.featured_first(),
            _ => self.visible.visible().to_vec(),
        };
        let v = &self.registry.config.video;
        let tiles = self.layout.tiles(ids.len(), v.width, v.height);
        let placed: Vec<(SessionId, Tile)> = ids.into_iter().zip(tiles).collect();
        self.tiles = placed.iter().copied().collect();
        placed
    }

    /// Places the visible participants by the current layout and tells clients.
    pub(super) fn relayout(&mut self) {
        let placed = self.place();
        self.video.apply_layout(&placed);
        self.apply_publish_caps();
        self.broadcast(self.layout_message());
    }

    /// The layout as the `layout` room message carries it.
    pub(super) fn layout_message(&self) -> ServerMessage {
        let info = self.layout_info();
        ServerMessage::Layout {
            width: self.registry.config.video.width,
            height: self.registry.config.video.height,
            mode: info.mode_name().to_owned(),
            pinned: info.pin.clone(),
            tiles: info.tiles,
        }
    }

    /// The layout as clients see it: mode, pins and each tile in fractions of the canvas.
    pub(super) fn layout_info(&self) -> LayoutInfo {
        let (w, h) = (
            self.registry.config.video.width as f64,
            self.registry.config.video.height as f64,
        );
        let mut placed: Vec<(&SessionId, &Tile)> = self.tiles.iter().collect();
        placed.sort_by_key(|(_, t)| (t.y, t.x));
        LayoutInfo {
            mode: self.layout.clone(),
            pin: self
                .visible
                .pinned()
                .iter()
                .map(|p| p.to_string())
                .collect(),
            max_tiles: self.registry.config.video.max_tiles,
            featured: self.visible.featured().map(|f| f.to_string()),
            tiles: placed
                .into_iter()
                .map(|(id, t)| TileInfo {
                    id: id.to_string(),
                    name: self
                        .participants
                        .get(id)
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    x: t.x as f64 / w,
                    y: t.y as f64 / h,
                    w: t.w as f64 / w,
                    h: t.h as f64 / h,
                })
                .collect(),
        }
    }

    /// A new layout mode and/or pins (`PUT /api/rooms/{room}/layout`). Everything is checked
    /// before anything changes: a refused request leaves the room as it was.
    pub(super) fn set_layout(
        &mut self,
        mode: Option<LayoutMode>,
        pin: Option<Vec<String>>,
    ) -> Result<LayoutInfo, RoomError> {
        let mode = mode.unwrap_or_else(|| self.layout.clone());
        let capacity = mode.capacity(self.registry.config.video.max_tiles);
        let pins = match pin {
            Some(list) => {
                let mut pins = Vec::with_capacity(list.len());
                for s in &list {
                    let id = SessionId::parse(s)
                        .filter(|id| self.visible.contains(*id))
                        .ok_or_else(|| {
                            RoomError::BadLayout(format!("pin: no publisher {s:?} in the room"))
                        })?;
                    pins.push(id);
                }
                self.visible
                    .check_pins(&pins, capacity)
                    .map_err(|e| RoomError::BadLayout(format!("pin: {e}")))?;
                Some(pins)
            }
            None => None,
        };
        self.layout = mode;
        self.visible.set_capacity(capacity);
        if let Some(pins) = pins {
            // Checked above against the same members and capacity.
            let _ = self.visible.set_pins(pins);
        }
        self.visible.update(Instant::now());
        self.apply_visible();
        let info = self.layout_info();
        tracing::info!(room = %self.id, mode = info.mode_name(), pinned = ?info.pin, "layout changed");
        Ok(info)
    }
}
