// Sending audio from the page: each source (microphone, dropped file) is its own WebSocket and its own
// remote stream: start_stream with the source's own format, wait for `accepted`, then binary. The page does
// not resample or round: it sends Float32 samples at the source's own rate (f32le) and the engine converts
// them by the one function every source goes through, so a dropped file gives the segments `--input FILE`
// gives. Nothing is sent until the person pressed a button or dropped a file.
'use strict';

const SEND_HIGH_WATER_BYTES = 256 * 1024;  // a file waits while this much is still queued on its socket
const MIN_RATE_HZ = 8000, MAX_RATE_HZ = 48000;  // what start_stream accepts (stream/formats.py)
const FALLBACK_RATE_HZ = 48000;  // a file at another rate (or of unknown rate) is decoded at this one
const MAX_CHANNELS = 2;  // more are averaged to mono here, as the engine averages two
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withToken(path) {  // the page's own ?token= (the engine asks it of every request, files included)
  const url = new URL(path, location.href);
  const token = new URLSearchParams(location.search).get('token');
  if (token) url.searchParams.set('token', token);
  return url;
}

const f32le = (rate, channels) => ({ sample_rate_hz: rate, encoding: 'f32le', channels });

class AudioSender {
  // format: what start_stream declares; onStream(id): the engine's id for this stream; onEnded(): its
  // `ended` arrived. The page is served by the engine it talks to, so it always speaks protocol 2.
  constructor(socketUrl, name, format, { onStream, onEnded, onError }) {
    this.name = name; this.format = format;
    this.onStream = onStream; this.onEnded = onEnded; this.onError = onError;
    this.stream = null;
    this.ws = new WebSocket(socketUrl);
    this.ws.binaryType = 'arraybuffer';
    this.ready = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.ready.catch(() => {});  // a refusal is reported where `ready` is awaited
    this.ws.onmessage = (e) => this._message(e.data);
    this.ws.onclose = () => this._reject(new Error('the connection to the engine closed'));
  }

  _message(data) {
    if (typeof data !== 'string') return;
    let m;
    try { m = JSON.parse(data); } catch { return; }
    if (m.type === 'hello') {
      if (m.accepts_audio === false) {
        this._reject(new Error('This engine does not accept audio from the page: start it with --accept-audio (or open the page with its ?token=).'));
        return;
      }
      this.ws.send(JSON.stringify({ type: 'start_stream', stream: this.name, format: this.format }));
    } else if (m.type === 'accepted') {
      this.stream = m.stream;
      this.accepted = m.format;
      this.onStream(m.stream);
      this._resolve();
    } else if (m.type === 'stream' && m.state === 'ended' && m.stream === this.stream) {
      this.onEnded();
      this.ws.close(1000);
    } else if (m.type === 'error' && (!m.stream || m.stream === this.stream)) {
      if (['bad_format', 'remote_audio_disabled', 'no_stream', 'bad_message'].includes(m.code)) {
        this._reject(new Error(m.message));
        this.onError(m.message);
      }
    }
  }

  send(buffer) { this.ws.send(buffer); }

  async drain(limitBytes) {
    while (this.ws.readyState === WebSocket.OPEN && this.ws.bufferedAmount > limitBytes) await sleep(10);
  }

  end() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'end_stream' }));
  }
}

class Microphone {
  // makeSender(format): an AudioSender declaring that format (known once the context runs).
  constructor(makeSender, onLevel) { this.makeSender = makeSender; this.onLevel = onLevel; }

  async start() {
    this.media = await navigator.mediaDevices.getUserMedia(
      { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    this.ctx = new AudioContext();
    if (this.ctx.sampleRate > MAX_RATE_HZ || this.ctx.sampleRate < MIN_RATE_HZ) {
      await this.ctx.close();  // e.g. a 96 kHz device: let the browser resample to a rate the engine takes
      this.ctx = new AudioContext({ sampleRate: FALLBACK_RATE_HZ });
    }
    this.sender = this.makeSender(f32le(this.ctx.sampleRate, 1));
    await this.sender.ready;
    await this.ctx.audioWorklet.addModule(withToken('worklet.js'));
    this.node = new AudioWorkletNode(this.ctx, 'pcm-f32', { numberOfInputs: 1, numberOfOutputs: 1 });
    this.node.port.onmessage = (e) => {
      if (this.sender.ws.readyState === WebSocket.OPEN) this.sender.send(e.data.samples);
      this.onLevel(e.data.rms);
    };
    const silent = this.ctx.createGain();
    silent.gain.value = 0;  // pulls the worklet without playing anything
    this.ctx.createMediaStreamSource(this.media).connect(this.node);
    this.node.connect(silent).connect(this.ctx.destination);
    await this.ctx.resume();
  }

  async stop() {
    if (this.node) {
      this.node.port.postMessage('stop');
      await sleep(50);  // the worklet posts its last partial chunk
    }
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
    if (this.ctx && this.ctx.state !== 'closed') await this.ctx.close();
    this.onLevel(0);
    if (this.sender) this.sender.end();
  }
}


// Decoding a dropped file for sending, the way `ser-live --input FILE` reads it: at the file's own rate
// (read from its header; decodeAudioData resamples to the context's rate, so the context gets the file's),
// its own channels (one or two: the engine averages them), and, for 16-bit files, exactly the integers in the
// file over 32768, as libsndfile gives them (Chromium scales positive samples by 1/32767, which moves one
// sample in four by one step once the engine rounds them back).
function id3Size(v) {  // an ID3v2 tag before the audio (FLAC files may carry one)
  if (v.byteLength < 10 || String.fromCharCode(v.getUint8(0), v.getUint8(1), v.getUint8(2)) !== 'ID3') return 0;
  return 10 + ((v.getUint8(6) & 0x7f) << 21 | (v.getUint8(7) & 0x7f) << 14 | (v.getUint8(8) & 0x7f) << 7 | (v.getUint8(9) & 0x7f));
}

/** The file's sample rate and integer bit depth (0: float or unknown) from its header; null: not known. */
function headerInfo(bytes) {
  const v = new DataView(bytes);
  const tag = (at, n) => (at + n <= v.byteLength ? String.fromCharCode(...new Uint8Array(bytes, at, n)) : '');
  if (tag(0, 4) === 'RIFF' && tag(8, 4) === 'WAVE') {
    for (let at = 12; at + 8 <= v.byteLength; at += 8 + v.getUint32(at + 4, true) + (v.getUint32(at + 4, true) & 1)) {
      if (tag(at, 4) !== 'fmt ' || at + 24 > v.byteLength) continue;
      const code = v.getUint16(at + 8, true);
      const pcm = code === 1 || (code === 0xfffe && at + 34 <= v.byteLength && v.getUint16(at + 32, true) === 1);
      return { rate: v.getUint32(at + 12, true), bits: pcm ? v.getUint16(at + 22, true) : 0 };
    }
    return null;
  }
  const flac = id3Size(v);
  if (tag(flac, 4) === 'fLaC' && flac + 26 <= v.byteLength && (v.getUint8(flac + 4) & 0x7f) === 0) {
    const info = flac + 8;  // STREAMINFO: 20 bits of rate, 3 of channels - 1, 5 of bits per sample - 1
    const rate = (v.getUint8(info + 10) << 12) | (v.getUint8(info + 11) << 4) | (v.getUint8(info + 12) >> 4);
    return { rate, bits: (((v.getUint8(info + 12) & 1) << 4) | (v.getUint8(info + 13) >> 4)) + 1 };
  }
  if (tag(0, 4) === 'OggS') {
    const first = tag(28, 8);
    if (first === 'OpusHead') return { rate: 48000, bits: 0 };  // Opus always decodes at 48 kHz
    if (first.slice(1, 7) === 'vorbis' && v.byteLength >= 44) return { rate: v.getUint32(40, true), bits: 0 };
  }
  if (tag(4, 4) === 'ftyp' || (v.byteLength >= 4 && v.getUint32(0) === 0x1a45dfa3)) return null;  // MP4, WebM
  return mpegRate(v, flac);
}

/** An MPEG audio (MP3) file's rate from its first frame header (after any ID3 tag); null: not one. */
function mpegRate(v, at) {
  for (let i = at; i + 4 <= Math.min(v.byteLength, at + 4096); i++) {
    const b1 = v.getUint8(i + 1), b2 = v.getUint8(i + 2);
    const version = (b1 >> 3) & 3, layer = (b1 >> 1) & 3, bitrate = b2 >> 4, index = (b2 >> 2) & 3;
    if (v.getUint8(i) !== 0xff || (b1 & 0xe0) !== 0xe0 || version === 1 || !layer || bitrate === 15 || index === 3) continue;
    return { rate: [44100, 48000, 32000][index] / [4, 0, 2, 1][version], bits: 0 };  // MPEG 2.5, -, 2, 1
  }
  return null;
}

/** Channel data decoded from `bits`-bit integers (8 or 16) -> exactly k / 2^(bits-1), as libsndfile reads them,
 * in place; left alone where it is not such data (another browser, or one that already scales so). */
function putOnIntGrid(data, bits) {
  const full = 2 ** (bits - 1);
  const near = (scale) => data.every((x) => x <= 0 || Math.abs(x * scale - Math.round(x * scale)) < 1e-3);
  const positive = near(full - 1) ? full - 1 : near(full) ? full : 0;
  if (!positive) return;
  for (let i = 0; i < data.length; i++) data[i] = Math.round(data[i] * (data[i] < 0 ? full : positive)) / full;
}

/** The mean of more than two channels in float32, in channel order, as numpy's mean takes it. */
function mean(channels, length) {
  const mono = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    let sum = 0;
    for (const ch of channels) sum = Math.fround(sum + ch[i]);
    mono[i] = sum / channels.length;
  }
  return mono;
}

/** A file -> {format (f32le at the file's rate), channels: one or two Float32Array, seconds}. */
async function decodeFile(file) {
  const bytes = await file.arrayBuffer();
  const info = headerInfo(bytes);
  const own = info && info.rate >= MIN_RATE_HZ && info.rate <= MAX_RATE_HZ;
  const rate = own ? info.rate : FALLBACK_RATE_HZ;
  const decoded = await new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes)  // at `rate`: no resampling
    .catch(() => { throw new Error('not audio this browser can decode'); });
  let channels = [];
  for (let c = 0; c < decoded.numberOfChannels; c++) channels.push(decoded.getChannelData(c));
  if (own && (info.bits === 8 || info.bits === 16)) channels.forEach((ch) => putOnIntGrid(ch, info.bits));
  if (channels.length > MAX_CHANNELS) channels = [mean(channels, decoded.length)];
  return { format: f32le(rate, channels.length), channels, seconds: decoded.length / rate };
}

/** One second a message (at most 48000 x 2 x 4 bytes, well under the 1 MiB a message may be), interleaved. */
async function sendSamples(sender, { format, channels, seconds }, onProgress) {
  await sender.ready;
  const rate = format.sample_rate_hz, length = channels[0].length;
  for (let start = 0; start < length; start += rate) {
    const n = Math.min(rate, length - start);
    const frames = new Float32Array(n * channels.length);
    channels.forEach((ch, c) => { for (let i = 0; i < n; i++) frames[i * channels.length + c] = ch[start + i]; });
    await sender.drain(SEND_HIGH_WATER_BYTES);
    if (sender.ws.readyState !== WebSocket.OPEN) throw new Error('the connection to the engine closed');
    sender.send(frames.buffer);
    onProgress((start + n) / rate, seconds);
  }
  sender.end();
}

window.SerAudio = { withToken, AudioSender, Microphone, headerInfo, decodeFile, sendSamples };
