//! Fake media for browser tests: a solid-colour Y4M clip and a sine WAV (Chromium's fake
//! camera and microphone files), and page probes for the web app: the colour of the other
//! participant's tile, and the level of tones in what the page plays.

/// The mean colour of the middle of the other participant's tile (the one that is not the
/// page's own) in the composite the page plays, drawn to a canvas: `[r, g, b]` or null.
pub fn canvas_probe() -> String {
    r#"(() => {
  const v = document.getElementById('composite');
  const l = window.mixdown && window.mixdown.layout;
  if (!v || !l || !v.videoWidth) return null;
  const t = l.tiles.find((t) => t.id !== window.mixdown.id);
  if (!t) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const x = Math.round((t.x + t.w / 4) * c.width), y = Math.round((t.y + t.h / 4) * c.height);
  const w = Math.max(1, Math.round(t.w / 2 * c.width)), h = Math.max(1, Math.round(t.h / 2 * c.height));
  const d = g.getImageData(x, y, w, h).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  const n = d.length / 4;
  return sum.map((s) => s / n);
})()"#
        .into()
}

/// A short Y4M clip of one colour (Chromium loops it as its fake camera), BT.601 limited range.
pub fn solid_y4m(width: usize, height: usize, rgb: [u8; 3]) -> Vec<u8> {
    let [r, g, b] = rgb.map(|c| c as f32);
    let y = (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).round() as u8;
    let u = (128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0).round() as u8;
    let v = (128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0).round() as u8;
    let mut out = format!("YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n").into_bytes();
    for _ in 0..10 {
        out.extend_from_slice(b"FRAME\n");
        out.extend(std::iter::repeat_n(y, width * height));
        out.extend(std::iter::repeat_n(u, width * height / 4));
        out.extend(std::iter::repeat_n(v, width * height / 4));
    }
    out
}

/// One second of a sine at `hz` (a whole number of cycles, so it loops cleanly): 48 kHz mono
/// 16-bit PCM WAV, Chromium's fake microphone.
pub fn tone_wav(hz: f32) -> Vec<u8> {
    let rate = 48_000u32;
    let samples: Vec<i16> = (0..rate)
        .map(|i| {
            let t = i as f32 / rate as f32;
            (0.3 * (2.0 * std::f32::consts::PI * hz * t).sin() * i16::MAX as f32) as i16
        })
        .collect();
    let data_len = samples.len() as u32 * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// `[r, g, b]` from a probe's JSON answer (`null` or anything else: `None`).
pub fn colour_of(v: &serde_json::Value) -> Option<[f32; 3]> {
    let c: Vec<f32> = v
        .as_array()?
        .iter()
        .filter_map(|x| x.as_f64().map(|x| x as f32))
        .collect();
    (c.len() == 3).then(|| [c[0], c[1], c[2]])
}

/// An expression the web app's page evaluates to the level (dB re a full-scale sine) of each
/// of `hzs` in the audio it plays, from 1.5 s recorded with MediaRecorder and decoded offline
/// (Firefox without a sound device never starts a live AudioContext; this works in both).
pub fn tone_probe(hzs: &[f32]) -> String {
    format!(
        r#"(async () => {{
  const v = document.getElementById('composite');
  const track = v && v.srcObject && v.srcObject.getAudioTracks()[0];
  if (!track) return null;
  const rec = new MediaRecorder(new MediaStream([track]));
  const chunks = [];
  rec.ondataavailable = (e) => chunks.push(e.data);
  const stopped = new Promise((r) => (rec.onstop = r));
  rec.start();
  await new Promise((r) => setTimeout(r, 1500));
  rec.stop();
  await stopped;
  const buf = await new Blob(chunks).arrayBuffer();
  const audio = await new OfflineAudioContext(1, 48000, 48000).decodeAudioData(buf);
  const all = audio.getChannelData(0);
  const x = all.slice(Math.floor(all.length / 4), Math.floor(all.length * 3 / 4));
  if (x.length < 4800) return null;
  return {hzs:?}.map((f) => {{
    const w = 2 * Math.PI * f / audio.sampleRate, c = 2 * Math.cos(w);
    let s1 = 0, s2 = 0;
    for (const v of x) {{ const s0 = v + c * s1 - s2; s2 = s1; s1 = s0; }}
    const power = s1 * s1 + s2 * s2 - c * s1 * s2;
    const amplitude = 2 * Math.sqrt(Math.max(power, 1e-20)) / x.length;
    return 20 * Math.log10(amplitude + 1e-10);
  }});
}})()"#
    )
}
