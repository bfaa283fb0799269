# A Rack app for Puma (tests/recipes.rs): the routes of app.py (`/`, `/slow?ms=N`, a POST
# echoed), each answer naming its process in an X-Worker-Pid header.
# Run: puma --bind tcp://127.0.0.1:PORT config.ru, the --bind matching the socket handed
# in as fd 3 (Puma takes an inherited LISTEN_FDS socket only for a --bind that matches).
run lambda { |env|
  pid = Process.pid
  if env["REQUEST_METHOD"] == "POST"
    body = env["rack.input"].read
  elsif env["PATH_INFO"] == "/slow"
    ms = env["QUERY_STRING"][/(?:^|&)ms=(\d+)/, 1].to_i
    sleep(ms / 1000.0)
    body = "slept #{ms} ms in pid #{pid}\n"
  else
    body = "hello from pid #{pid}\n"
  end
  [200, {"content-type" => "text/plain", "content-length" => body.bytesize.to_s,
         "x-worker-pid" => pid.to_s}, [body]]
}
