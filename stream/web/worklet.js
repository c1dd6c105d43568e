// AudioWorklet: the microphone's blocks (any rate, any channel count) -> 16 kHz mono s16le, posted to the
// page in ~100 ms chunks with their RMS level. A windowed-sinc resampler (Blackman window, cutoff at 92 % of
// the lower Nyquist) keeps speech below 8 kHz and stops what lies above from folding back into it.
const OUT_RATE_HZ = 16000;
const CHUNK_SAMPLES = 1600;  // 100 ms at 16 kHz
const ZEROS = 8;             // sinc zero crossings each side
const TABLE_PER_SAMPLE = 128; // kernel table resolution (steps per input sample)

class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;  // input samples per output sample
    const c = Math.min(1, outRate / inRate) * 0.92;
    this.half = Math.ceil(ZEROS / c);
    const n = this.half * TABLE_PER_SAMPLE + 2;
    this.table = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const t = i / TABLE_PER_SAMPLE;
      const x = Math.PI * c * t;
      const sinc = t === 0 ? 1 : Math.sin(x) / x;
      const w = t >= this.half ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * t / this.half) + 0.08 * Math.cos(2 * Math.PI * t / this.half);
      this.table[i] = c * sinc * w;
    }
    this.buf = new Float32Array(this.half + 4096);  // starts with `half` samples of silence before time 0
    this.len = this.half;
    this.pos = this.half;  // input position (in buf) of the next output sample
  }

  kernel(dt) {
    const f = Math.abs(dt) * TABLE_PER_SAMPLE;
    const i = Math.floor(f);
    return this.table[i] + (this.table[i + 1] - this.table[i]) * (f - i);
  }

  push(input, out) {  // appends output samples to the array `out`
    if (this.len + input.length > this.buf.length) {
      const grown = new Float32Array((this.len + input.length) * 2);
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    while (this.pos + this.half < this.len) {
      const centre = Math.floor(this.pos);
      let acc = 0;
      for (let k = centre - this.half + 1; k <= centre + this.half; k++) acc += this.buf[k] * this.kernel(this.pos - k);
      out.push(acc);
      this.pos += this.step;
    }
    const keep = Math.floor(this.pos) - this.half;  // drop what no future output needs
    if (keep > 0) {
      this.buf.copyWithin(0, keep, this.len);
      this.len -= keep;
      this.pos -= keep;
    }
  }
}

class Pcm16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, OUT_RATE_HZ);  // sampleRate: the context's, a worklet global
    this.pending = [];
    this.stopped = false;
    this.port.onmessage = (e) => { if (e.data === 'stop') { this.flush(); this.stopped = true; } };
  }

  flush() {
    if (!this.pending.length) return;
    const pcm = new Int16Array(this.pending.length);
    let sum = 0;
    for (let i = 0; i < pcm.length; i++) {
      const v = Math.max(-1, Math.min(1, this.pending[i]));
      sum += v * v;
      pcm[i] = Math.round(v * 32767);
    }
    const rms = Math.sqrt(sum / pcm.length);
    this.port.postMessage({ pcm: pcm.buffer, rms }, [pcm.buffer]);
    this.pending = [];
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (channels && channels.length) {
      const n = channels[0].length;
      const mono = new Float32Array(n);
      for (const ch of channels) for (let i = 0; i < n; i++) mono[i] += ch[i] / channels.length;
      this.resampler.push(mono, this.pending);
      if (this.pending.length >= CHUNK_SAMPLES) this.flush();
    }
    return true;
  }
}

registerProcessor('pcm16k', Pcm16k);
