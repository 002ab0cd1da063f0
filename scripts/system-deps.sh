#!/usr/bin/env bash
# Installs the optional FluidSynth library and a General MIDI soundfont when apt-get is
# present and we are root. Never fails the build: the corpus has a pure-numpy fallback.
set -u
if ldconfig -p 2>/dev/null | grep -q libfluidsynth && { [ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || [ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; }; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no root apt-get; using the numpy fallback synthesizer"; exit 0
fi
echo "system-deps: installing libfluidsynth3 + timgm6mb-soundfont (optional)"
timeout 300 apt-get update -qq >/dev/null 2>&1 || true
timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  libfluidsynth3 timgm6mb-soundfont >/dev/null 2>&1 \
  || echo "system-deps: apt-get install failed; using the numpy fallback synthesizer"
exit 0
