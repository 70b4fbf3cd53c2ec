//! A WebRTC client on GStreamer's webrtcbin (libnice ICE, its own DTLS/SRTP): a stack other
//! than webrtc-rs. Publishes a colour and a tone over WHIP and decodes what it receives.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;
use mixdown_bench::received::{Received, RgbFrame};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct WebrtcbinClient {
    pub location: String,
    pub received: Arc<Received>,
    pipeline: gst::Pipeline,
    base: String,
}

fn promise() -> (gst::Promise, oneshot::Receiver<Option<gst::Structure>>) {
    let (tx, rx) = oneshot::channel();
    let p = gst::Promise::with_change_func(move |reply| {
        let _ = tx.send(reply.ok().flatten().map(|s| s.to_owned()));
    });
    (p, rx)
}

fn on_pad_added(pipeline: &gst::Pipeline, pad: &gst::Pad, received: Arc<Received>) {
    let decode = gst::ElementFactory::make("decodebin").build().unwrap();
    let pipeline_weak = pipeline.downgrade();
    decode.connect_pad_added(move |_, src| {
        let Some(pipeline) = pipeline_weak.upgrade() else { return };
        let caps = src.current_caps().unwrap_or_else(|| src.query_caps(None));
        let name = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        let received = received.clone();
        let desc = if name.starts_with("video/") {
            "videoconvert ! video/x-raw,format=RGB ! appsink name=vsink sync=false"
        } else {
            "audioconvert ! audioresample ! audio/x-raw,format=F32LE,rate=48000,channels=1,layout=interleaved ! appsink name=asink sync=false"
        };
        let bin = gst::parse::bin_from_description(desc, true).unwrap();
        pipeline.add(&bin).unwrap();
        if let Some(v) = bin.by_name("vsink") {
            let r = received.clone();
            v.downcast::<gst_app::AppSink>().unwrap().set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let info = gstreamer_video::VideoInfo::from_caps(
                            sample.caps().ok_or(gst::FlowError::Error)?,
                        )
                        .map_err(|_| gst::FlowError::Error)?;
                        let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                        let (w, h) = (info.width(), info.height());
                        let stride = info.stride()[0] as usize;
                        let mut data = Vec::with_capacity((w * h * 3) as usize);
                        for row in 0..h as usize {
                            data.extend_from_slice(&map[row * stride..row * stride + w as usize * 3]);
                        }
                        r.push_frame(RgbFrame { width: w, height: h, data });
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        }
        if let Some(a) = bin.by_name("asink") {
            let r = received.clone();
            a.downcast::<gst_app::AppSink>().unwrap().set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                        let pcm: Vec<f32> = map
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect();
                        r.push_audio(&pcm);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        }
        bin.sync_state_with_parent().unwrap();
        let sink = bin.static_pad("sink").unwrap();
        let _ = src.link(&sink);
    });
    pipeline.add(&decode).unwrap();
    decode.sync_state_with_parent().unwrap();
    let _ = pad.link(&decode.static_pad("sink").unwrap());
}

impl WebrtcbinClient {
    pub async fn join(base: &str, room: &str, colour: u32, tone_hz: f32) -> Self {
        // SSRCs go in the caps so the offer signals them (a=ssrc): with two bundled sections,
        // webrtc-rs maps packets to sections by signalled SSRC or MID.
        let desc = format!(
            "webrtcbin name=w bundle-policy=max-bundle \
             videotestsrc is-live=true pattern=solid-color foreground-color={colour} \
               ! video/x-raw,width=320,height=240,framerate=15/1 \
               ! vp8enc deadline=1 cpu-used=-8 keyframe-max-dist=15 target-bitrate=300000 \
               ! rtpvp8pay pt=96 ssrc=1111 \
               ! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000,ssrc=(uint)1111 ! w. \
             audiotestsrc is-live=true wave=sine freq={tone_hz} volume=0.3 \
               ! audioconvert ! audioresample ! opusenc ! rtpopuspay pt=111 ssrc=2222 \
               ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,ssrc=(uint)2222 ! w."
        );
        let pipeline = gst::parse::launch(&desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let webrtc = pipeline.by_name("w").unwrap();
        let received = Arc::new(Received::default());
        {
            let weak = pipeline.downgrade();
            let received = received.clone();
            webrtc.connect_pad_added(move |_, pad| {
                if pad.direction() == gst::PadDirection::Src
                    && let Some(p) = weak.upgrade()
                {
                    on_pad_added(&p, pad, received.clone());
                }
            });
        }
        // libnice leaves loopback out of gathering; tests stay on loopback, so ask for it.
        let ice = webrtc.property::<gst::Object>("ice-agent");
        let added = ice.emit_by_name::<bool>("add-local-ip-address", &[&"127.0.0.1"]);
        assert!(added, "webrtcbin accepts 127.0.0.1 for ICE");
        pipeline.set_state(gst::State::Playing).unwrap();

        let (p, reply) = promise();
        webrtc.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &p]);
        let reply = reply.await.unwrap().expect("offer");
        let offer = reply
            .get::<gst_webrtc::WebRTCSessionDescription>("offer")
            .unwrap();
        webrtc.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
        for _ in 0..100 {
            let state =
                webrtc.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state");
            if state == gst_webrtc::WebRTCICEGatheringState::Complete {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let local = webrtc
            .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
            .expect("local description");
        let sdp = local.sdp().as_text().unwrap();
        let response = reqwest::Client::new()
            .post(format!("{base}/whip/{room}"))
            .header("Content-Type", "application/sdp")
            .body(sdp)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "webrtcbin offer refused");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let answer = response.text().await.unwrap();
        let sdp = gst_sdp::SDPMessage::parse_buffer(answer.as_bytes()).unwrap();
        let answer =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp);
        let (p, reply) = promise();
        webrtc.emit_by_name::<()>("set-remote-description", &[&answer, &p]);
        let _ = reply.await;
        WebrtcbinClient {
            location,
            received,
            pipeline,
            base: base.to_owned(),
        }
    }

    pub async fn leave(self) -> u16 {
        let status = mixdown_bench::client::delete_session(&self.base, &self.location).await;
        let _ = self.pipeline.set_state(gst::State::Null);
        status
    }
}
