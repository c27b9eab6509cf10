// The room's measures: names, units and the precision their sensors can vouch for. Values are shown
// rounded to ``step``; a finer digit is noise (docs/pages.md, "Values and their precision").
//
//   formatValue(22.399, "temp_c") === "22.4";  formatValue(623, "co2_ppm") === "620"

// Environment measures of the room profiles (controller/room/config.py), and the battery.
export const MEASURES = {
  temp_c: { name: "Temperature", unit: "°C", step: 0.1 },           // SHT3x: ±0.2 °C
  rh_pct: { name: "Relative humidity", unit: "%", step: 1 },        // SHT3x: ±2 %RH
  co2_ppm: { name: "CO₂", unit: "ppm", step: 10 },                  // MH-Z19B: ±(50 ppm + 5 %)
  noise_db: { name: "Noise", unit: "dB", step: 1 },                 // class 2 sound level meter: ±1.4 dB
  pressure_pa: { name: "Pressure vs corridor", unit: "Pa", step: 0.1 },  // isolation-room monitors: 0.1 Pa
  batt_v: { name: "Battery", unit: "V", step: 0.01 },               // the node's ADC reads millivolts
};

/** A value as its sensor can vouch for it: 22.399 °C -> "22.4", 623 ppm -> "620". */
export function formatValue(value, measure) {
  const step = (MEASURES[measure] || {}).step;
  if (typeof value !== "number" || !Number.isFinite(value) || !step) return String(value);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return (Math.round(value / step) * step).toFixed(decimals);
}
