// Audible cues at the nurse station, one per priority, after the user has enabled sound (browsers
// only allow audio after a click). Patterns follow the spirit of IEC 60601-1-8: high is fast
// bursts, medium a slower beat, low a single tone; information makes no sound.
//
//   const sounder = new Sounder();
//   button.onclick = () => sounder.enable();
//   sounder.play("high");

// [start s, length s] of each pulse, and its pitch. High: two bursts of 3 + 2 fast pulses.
export const CUES = {
  high: { hz: 880, pulses: [[0, 0.1], [0.15, 0.1], [0.3, 0.1], [0.6, 0.1], [0.75, 0.1],
                            [1.5, 0.1], [1.65, 0.1], [1.8, 0.1], [2.1, 0.1], [2.25, 0.1]] },
  medium: { hz: 660, pulses: [[0, 0.2], [0.4, 0.2], [0.8, 0.2]] },
  low: { hz: 440, pulses: [[0, 0.5]] },
};
const RAMP_S = 0.015;  // fade each pulse in and out: a hard edge clicks
const VOLUME = 0.3;

export class Sounder {
  constructor() {
    this.context = null;
    this.onplay = () => {};
  }

  get enabled() { return this.context !== null && this.context.state !== "closed"; }

  /** Call from a click handler. */
  async enable() {
    if (!this.context) this.context = new AudioContext();
    if (this.context.state === "suspended") await this.context.resume();
  }

  async disable() {
    if (this.context) await this.context.close();
    this.context = null;
  }

  /** Play the cue of a priority; returns whether anything sounded. */
  play(priority) {
    const cue = CUES[priority];
    if (!cue || !this.enabled) return false;
    const ctx = this.context;
    const t0 = ctx.currentTime + 0.02;
    for (const [start, length] of cue.pulses) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = cue.hz;
      gain.gain.setValueAtTime(0, t0 + start);
      gain.gain.linearRampToValueAtTime(VOLUME, t0 + start + RAMP_S);
      gain.gain.setValueAtTime(VOLUME, t0 + start + length - RAMP_S);
      gain.gain.linearRampToValueAtTime(0, t0 + start + length);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t0 + start);
      osc.stop(t0 + start + length);
    }
    this.onplay(priority);
    return true;
  }
}
