// Energy voice-activity detector on 80 ms mic frames, used for barge-in: when the user starts to
// speak, local playback is flushed without waiting a network round trip for the server to notice.
// The threshold tracks the noise floor so a fan or room tone does not count as speech; browser echo
// cancellation keeps the assistant's own voice out of the mic signal.

export function frameDbfs(frame) {
  let sum = 0;
  for (let i = 0; i < frame.length; i++) sum += frame[i] * frame[i];
  const rms = Math.sqrt(sum / Math.max(1, frame.length));
  return 20 * Math.log10(rms + 1e-9);
}

export class EnergyVad {
  constructor({ marginDb = 12, minSpeechDb = -45, onsetFrames = 1, hangoverFrames = 4, floorInitDb = -60 } = {}) {
    this.marginDb = marginDb;
    this.minSpeechDb = minSpeechDb;
    this.onsetFrames = onsetFrames;
    this.hangoverFrames = hangoverFrames;
    this.noiseFloorDb = floorInitDb;
    this.speaking = false;
    this.above = 0;
    this.below = 0;
  }

  /** Feed one frame; returns {speaking, onset, db}. `onset` is true only on the frame speech starts. */
  process(frame) {
    const db = frameDbfs(frame);
    const loud = db > Math.max(this.minSpeechDb, this.noiseFloorDb + this.marginDb);
    // Floor follows quiet frames quickly and loud ones slowly: a sentence barely moves it, while a
    // steady hum is absorbed within ~30 s.
    const rate = db < this.noiseFloorDb ? 0.3 : loud ? 0.01 : 0.05;
    this.noiseFloorDb += (db - this.noiseFloorDb) * rate;

    let onset = false;
    if (loud) {
      this.above++;
      this.below = 0;
      if (!this.speaking && this.above >= this.onsetFrames) {
        this.speaking = true;
        onset = true;
      }
    } else {
      this.below++;
      this.above = 0;
      if (this.speaking && this.below > this.hangoverFrames) this.speaking = false;
    }
    return { speaking: this.speaking, onset, db };
  }
}
