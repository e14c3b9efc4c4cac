import streamlit as st

from components.common import read_runs
from components.home_view import lesson_cards, run_counts

st.title("Ladder & Theseus Lab")
st.markdown(
    "Train small transformers, encoders and decoder language models alike, on your CPU or GPU and "
    "**watch what each method costs and buys**. "
    "Ladder Side-Tuning trains a narrow side network fed by a frozen backbone, so backprop never enters "
    "the backbone and its activations are never kept; BERT-of-Theseus swaps a fine-tuned model's layer "
    "blocks for fewer, compact layers while training; the classic toolbox (pruning, quantization, "
    "distillation) shrinks a finished model."
)
lesson_cards()
run_counts(read_runs())
