/// The path score, 0 (useless) to 100 (perfect), from latency, jitter and loss.
///
/// A rescaled form of the simplified ITU-T G.107 E-model ("R factor") that VoIP monitors use:
/// ```
/// effective = rtt / 2 + 2 * jitter + 10                      (ms; one-way delay plus jitter-buffer cost)
/// delayPenalty = effective < 160 ? effective / 40 : (effective - 120) / 10
/// R = 93.2 - delayPenalty - 2.5 * lossPercent
/// score = clamp(R * 100 / 93.2, 0, 100)
/// ```
/// Guarantees: non-increasing in each input (strictly, until it reaches 0), continuous everywhere (the two
/// delay branches meet at effective = 160 ms, both giving 4), and a pure function of its inputs.
public enum PathScore {
    public static func score(latencyMs: Double, jitterMs: Double, lossPct: Double) -> Double {
        let latency = latencyMs.isFinite ? max(0, latencyMs) : .infinity
        let jitter = jitterMs.isFinite ? max(0, jitterMs) : .infinity
        let loss = lossPct.isFinite ? min(max(0, lossPct), 100) : 100
        let effective = latency / 2 + 2 * jitter + 10
        let delayPenalty = effective < 160 ? effective / 40 : (effective - 120) / 10
        let r = 93.2 - delayPenalty - 2.5 * loss
        guard r.isFinite else { return 0 }
        return min(max(r * 100 / 93.2, 0), 100)
    }
}
