/**
 * Every event type with example fields, for the debug page's emit form.
 * Field names and kinds follow the event table of the original Coda
 * interface (coda_ws.events is the authority; GET /schema once it exists).
 */

export const EVENT_SAMPLES = {
  system_info: { data: { event: "debug", note: "hello from the debug page" } },
  system_error: { level: "warning", message: "test error from the debug page", details: null },
  system_metrics: { memory_mb: 512.0, cpu_percent: 12.5, gpu_vram_mb: null, uptime_seconds: 60.0 },
  stt_start: { mode: "push_to_talk" },
  stt_interim: { text: "what's the wea", confidence: 0.6 },
  stt_result: { text: "What's the weather like?", confidence: 0.94, duration_ms: 420.0, language: "en" },
  stt_error: { error: "microphone unavailable", details: null },
  llm_start: { prompt: "What's the weather like?", model: "llama3", temperature: 0.7 },
  llm_token: { token: "Sunny", cumulative_text: "Sunny" },
  llm_result: { text: "Sunny and 21 °C.", duration_ms: 640.0, token_count: 6, tokens_per_second: 9.4 },
  llm_error: { error: "model timed out", details: null },
  tts_start: { text: "Sunny and 21 °C.", voice_id: "default", engine: "elevenlabs" },
  tts_progress: { progress_percent: 50.0, estimated_duration_ms: 1200.0 },
  tts_result: { duration_ms: 600.0, audio_duration_ms: 1200.0, success: true },
  tts_error: { error: "voice not found", details: null },
  tts_status: { status: "ready" },
  memory_store: { content_preview: "User likes sunny weather.", memory_type: "preference", importance: 0.5, memory_id: "mem-1" },
  memory_retrieve: { query: "weather preferences", results_count: 1, relevance_scores: [0.82] },
  tool_call: { tool_name: "weather", parameters: { city: "Paris" }, call_id: "call-1" },
  tool_result: { tool_name: "weather", call_id: "call-1", result: { temp_c: 21 }, duration_ms: 48.0 },
  tool_error: { tool_name: "weather", call_id: "call-1", error: "service unavailable", details: null },
  conversation_start: { conversation_id: "conv-1" },
  conversation_turn: { conversation_id: "conv-1", turn_number: 1, user_input: "What's the weather like?", assistant_response: "Sunny and 21 °C." },
  conversation_end: { conversation_id: "conv-1", total_turns: 1, duration_seconds: 12.0 },
  latency_trace: { component: "llm", operation: "generate", duration_ms: 640.0, metadata: null },
  component_timing: { component: "stt", timings: { load: 12.0, transcribe: 410.0 } },
  component_status: { component_type: "stt", state: "ready", initialization_order: 1, dependencies: [] },
  component_error: { component_type: "tts", error_message: "engine crashed", error_count: 1, state: "failed" },
  component_health: { component_type: "llm", health_status: { ok: true } },
  system_status: { total_components: 4, ready_components: 4, failed_components: 0, integration_health: "healthy", components: {} },
  integration_metrics: { is_active: true, websocket_server_available: true, event_handlers_registered: true, total_events_processed: 0 },
  vad_start: { confidence: 0.92 },
  vad_end: { duration_ms: 1840.0, confidence: 0.88 },
  wake_word: { word: "hey coda", confidence: 0.97 },
  barge_in: { interrupted: "tts", played_ms: 1200.0 },
};

export const EVENT_TYPES = Object.keys(EVENT_SAMPLES);
