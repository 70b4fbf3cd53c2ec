//! The media plane: the GStreamer composite pipeline ([`video`]) and the Opus audio mixer
//! ([`audio`], with its pure DSP in [`dsp`]). The only place that imports `gstreamer` and
//! `opus`. It never knows about peer connections: it takes RTP through [`crate::media::RtpSink`]
//! and hands encoded frames back through channels.

pub mod audio;
pub mod batch;
pub mod dsp;
pub mod g711;
pub mod pacer;
pub mod video;

use gstreamer as gst;

#[derive(Debug, thiserror::Error)]
pub enum MixerError {
    #[error("GStreamer element {0} is missing")]
    MissingElement(String),
    #[error("pipeline fragment failed to parse: {message} (missing elements: {missing})")]
    Fragment { missing: String, message: String },
    #[error("linking failed: {0}")]
    Link(String),
    #[error("{0}")]
    State(&'static str),
    #[error("GStreamer: {0}")]
    Glib(String),
    #[error("cannot start the pacing thread: {0}")]
    Thread(String),
}

impl MixerError {
    fn glib(e: impl std::fmt::Display) -> Self {
        MixerError::Glib(e.to_string())
    }
}

/// Every element Mixdown uses and the Debian package that provides it.
pub const REQUIRED_ELEMENTS: &[(&str, &str)] = &[
    ("appsrc", "gstreamer1.0-plugins-base"),
    ("appsink", "gstreamer1.0-plugins-base"),
    ("videoconvert", "gstreamer1.0-plugins-base"),
    ("videoscale", "gstreamer1.0-plugins-base"),
    ("videorate", "gstreamer1.0-plugins-base"),
    ("videotestsrc", "gstreamer1.0-plugins-base"),
    ("compositor", "gstreamer1.0-plugins-base"),
    ("textoverlay", "gstreamer1.0-x"),
    ("tee", "libgstreamer1.0-0 (core)"),
    ("queue", "libgstreamer1.0-0 (core)"),
    ("capsfilter", "libgstreamer1.0-0 (core)"),
    ("rtpjitterbuffer", "gstreamer1.0-plugins-good"),
    ("rtpvp8depay", "gstreamer1.0-plugins-good"),
    ("rtph264depay", "gstreamer1.0-plugins-good"),
    ("vp8dec", "gstreamer1.0-plugins-good"),
    ("vp8enc", "gstreamer1.0-plugins-good"),
    ("rtpvp9depay", "gstreamer1.0-plugins-good"),
    ("vp9dec", "gstreamer1.0-plugins-good"),
    ("vp9enc", "gstreamer1.0-plugins-good"),
    ("h264parse", "gstreamer1.0-plugins-bad"),
    ("avdec_h264", "gstreamer1.0-libav"),
    ("x264enc", "gstreamer1.0-plugins-ugly"),
    // Outputs (recordings, HLS, RTMP).
    ("filesink", "libgstreamer1.0-0 (core)"),
    ("webmmux", "gstreamer1.0-plugins-good"),
    ("matroskamux", "gstreamer1.0-plugins-good"),
    ("mp4mux", "gstreamer1.0-plugins-good"),
    ("flvmux", "gstreamer1.0-plugins-good"),
    ("aacparse", "gstreamer1.0-plugins-good"),
    ("opusdec", "gstreamer1.0-plugins-base"),
    ("audioconvert", "gstreamer1.0-plugins-base"),
    ("audioresample", "gstreamer1.0-plugins-base"),
    ("voaacenc", "gstreamer1.0-plugins-bad"),
    ("hlssink2", "gstreamer1.0-plugins-bad"),
    ("rtmp2sink", "gstreamer1.0-plugins-bad"),
];

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("GStreamer failed to initialise: {0}")]
    Init(String),
    #[error(
        "GStreamer element '{element}' is missing: install the Debian package {package} (apt-get install {package})"
    )]
    Missing {
        element: &'static str,
        package: &'static str,
    },
}

/// Initialises GStreamer and checks that every element the pipelines need exists.
pub fn init() -> Result<(), StartupError> {
    gst::init().map_err(|e| StartupError::Init(e.to_string()))?;
    for (element, package) in REQUIRED_ELEMENTS {
        if gst::ElementFactory::find(element).is_none() {
            let package = package.split(' ').next().unwrap_or(package);
            return Err(StartupError::Missing { element, package });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer::prelude::*;

    #[test]
    fn every_fragment_parses_and_names_its_parts() {
        init().expect("GStreamer with the required plugins");
        for (name, text) in video::FRAGMENTS {
            let bin = gst::parse::bin_from_description_full(
                text,
                true,
                None,
                gst::ParseFlags::FATAL_ERRORS,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let bin = bin.downcast::<gst::Bin>().unwrap();
            let wanted: &[&str] = match name {
                n if n.ends_with("-input") => &["src", "jitter", "tile"],
                "placeholder" => &["src", "text", "tile"],
                _ => &["enc", "sink"],
            };
            for part in wanted {
                assert!(bin.by_name(part).is_some(), "{name} has no element {part}");
            }
        }
    }

    #[test]
    fn every_output_fragment_parses_and_names_its_parts() {
        init().expect("GStreamer with the required plugins");
        for (name, text) in crate::output::FRAGMENTS {
            let p = gst::parse::launch_full(text, None, gst::ParseFlags::FATAL_ERRORS)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let p = p.downcast::<gst::Bin>().unwrap();
            let wanted: &[&str] = if name == "aac-encoder" {
                &["src", "enc", "sink"]
            } else {
                &["video", "audio", "sink"]
            };
            for part in wanted {
                assert!(p.by_name(part).is_some(), "{name} has no element {part}");
            }
        }
    }

    #[test]
    fn every_required_element_is_known_to_the_check() {
        for (name, text) in video::FRAGMENTS
            .iter()
            .chain(crate::output::FRAGMENTS.iter())
        {
            for token in text.split_whitespace() {
                let factory = token.trim_start_matches('!');
                if factory.is_empty() || factory.contains(['=', '/', '.']) {
                    continue;
                }
                assert!(
                    REQUIRED_ELEMENTS.iter().any(|(e, _)| *e == factory),
                    "{name} uses {factory}, missing from REQUIRED_ELEMENTS"
                );
            }
        }
    }
}
