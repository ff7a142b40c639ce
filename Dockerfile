# GPU node image: CUDA, PyTorch with torchvision, NVIDIA DALI, and the coord agent as entrypoint.
# Build: docker build -t coord-node .
# Run:   docker run --gpus all --network host -e COORD_ADDR=10.0.0.5:7070 -e COORD_TOKEN=... -e COORD_CA_PEM="$(cat ca.pem)" coord-node
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/coord \
    PATH=/opt/coord/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/coord

# PyPI's Linux wheels of torch and torchvision are the CUDA builds (torchvision imports on
# GPU nodes; the trainer never needs it), plus DALI for the data pipelines.
RUN pip install torch==2.13.0 torchvision==0.28.0 nvidia-dali-cuda120 numpy

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY contract ./contract
COPY coordinator ./coordinator
COPY agent ./agent
COPY trainer ./trainer
# The agent and the trainer: coordd's own dependencies (the `coordd` extra) stay out.
RUN pip install ".[train]"

WORKDIR /var/lib/coord-agent
ENTRYPOINT ["coord-agent", "--workdir", "/var/lib/coord-agent"]
