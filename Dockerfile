# The operator's image: the tollway package and its `tollway` entry point on a slim Python, run as non-root.
# Not built by CI here (no container engine on these machines); tests/unit/test_packaging.py checks that it
# installs this project and runs the same entry point as pyproject.toml declares.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip install --no-cache-dir . && rm -rf /src

USER 65532:65532
# The UID has no passwd entry; libraries that ask for the user's name read this instead.
ENV USER=tollway
ENTRYPOINT ["tollway"]
CMD ["run"]
