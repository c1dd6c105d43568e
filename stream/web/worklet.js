// AudioWorklet: the microphone's blocks (any channel count) -> Float32 mono at the context's own rate, posted
// to the page in ~100 ms chunks with their RMS level. No resampling and no rounding here: the page declares
// {sample_rate_hz: sampleRate, encoding: "f32le", channels: 1} and the engine converts, by the same function
// a file given as --input goes through (stream/chunks.py, StreamResampler).
class PcmF32 extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Float32Array(Math.round(sampleRate / 10));  // sampleRate: the context's, a worklet global
    this.filled = 0;
    this.stopped = false;
    this.port.onmessage = (e) => { if (e.data === 'stop') { this.flush(); this.stopped = true; } };
  }

  flush() {
    if (!this.filled) return;
    const samples = this.chunk.slice(0, this.filled);
    let sum = 0;
    for (const v of samples) sum += v * v;
    this.port.postMessage({ samples: samples.buffer, rms: Math.sqrt(sum / samples.length) }, [samples.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (!channels || !channels.length) return true;
    for (let i = 0; i < channels[0].length; i++) {
      let sum = 0;
      for (const ch of channels) sum += ch[i];
      this.chunk[this.filled++] = channels.length === 1 ? sum : sum / channels.length;
      if (this.filled === this.chunk.length) this.flush();
    }
    return true;
  }
}

registerProcessor('pcm-f32', PcmF32);
