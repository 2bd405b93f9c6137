"""Flax model families: t5 (mT5/mT0), conformer (USM / w2v-BERT 2.0), whisper (encoder), adapter, slm."""
