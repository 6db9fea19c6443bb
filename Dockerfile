# logwriter: Gunicorn (PID 1) serving the service, lines kept on the /data volume.
# Legacy-builder compatible: no RUN --mount, no heredocs.

# Build stage: the project and every dependency as wheels.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime: only those wheels, installed offline into a venv, run as a non-root user.
FROM python:3.12-slim
COPY --from=build /wheels /wheels
RUN python -m venv /opt/logwriter \
 && /opt/logwriter/bin/pip install --no-cache-dir --no-index --find-links /wheels logwriter \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home logwriter \
 && mkdir /data && chown logwriter:logwriter /data
ENV PATH=/opt/logwriter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOGWRITER_DIR=/data \
    LOGWRITER_BIND=0.0.0.0:8080
VOLUME /data
USER logwriter
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-m", "service.probe"]
# Exec form: Gunicorn's arbiter is PID 1 and gets docker stop's SIGTERM itself.
CMD ["logwriter"]
