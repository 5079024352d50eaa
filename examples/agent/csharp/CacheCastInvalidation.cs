// An ASP.NET Core application kept coherent by the local cachecast agent:
// a BackgroundService follows the agent's event stream (GET /v1/events,
// Server-Sent Events) and removes IMemoryCache / IDistributedCache entries;
// CacheCastPublisher publishes (POST /v1/invalidate).
//
// A starting point, not compiled by the project's tests (its machines have
// no .NET). Needs .NET 9 or later (MemoryCache.Keys) and the
// System.Net.ServerSentEvents package (in the box from .NET 9).
//
// Program.cs:
//   builder.Services.AddMemoryCache();
//   builder.Services.AddHttpClient("cachecast", c =>
//   {
//       c.BaseAddress = new Uri("http://127.0.0.1:7468");
//       c.Timeout = Timeout.InfiniteTimeSpan; // the event stream stays open
//   });
//   builder.Services.AddSingleton<CacheCastPublisher>();
//   builder.Services.AddHostedService<CacheCastInvalidation>();
//
// A Redis IDistributedCache needs none of this for itself: let the agent
// apply to Redis ([[apply.redis]] with key_prefix = your InstanceName).

using System.Net.Http.Json;
using System.Net.ServerSentEvents;
using System.Text.Json;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.Caching.Memory;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace CacheCast;

/// <summary>Follows the agent's events and applies them to the caches.</summary>
public sealed class CacheCastInvalidation(
    IHttpClientFactory http,
    IMemoryCache memory,
    ILogger<CacheCastInvalidation> log,
    IDistributedCache? distributed = null) : BackgroundService
{
    // The cursor of the last applied event: resuming with it, the agent
    // sends exactly what we missed, or a `reset` first when it cannot.
    private string? _lastEventId;

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var failures = 0;
        var retry = TimeSpan.FromSeconds(2);
        while (!stop.IsCancellationRequested)
        {
            try
            {
                retry = await FollowAsync(stop);
                failures = 0;
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e) when (e is HttpRequestException or IOException or OperationCanceledException)
            {
                failures++;
                log.LogWarning("cachecast agent stream lost ({Error}); reconnecting", e.Message);
            }
            var delay = retry * Math.Pow(2, Math.Min(failures, 4));
            try { await Task.Delay(delay, stop); } catch (OperationCanceledException) { break; }
        }
    }

    /// <summary>One connection: applies events until the stream ends.</summary>
    private async Task<TimeSpan> FollowAsync(CancellationToken stop)
    {
        using var req = new HttpRequestMessage(HttpMethod.Get, "/v1/events");
        req.Headers.Accept.ParseAdd("text/event-stream");
        if (_lastEventId is not null)
            req.Headers.TryAddWithoutValidation("Last-Event-ID", _lastEventId);
        using var resp = await http.CreateClient("cachecast")
            .SendAsync(req, HttpCompletionOption.ResponseHeadersRead, stop);
        resp.EnsureSuccessStatusCode(); // 503 while the agent joins: retried
        await using var body = await resp.Content.ReadAsStreamAsync(stop);

        // The agent sends a keep-alive every 15 s: silence for longer means
        // a dead connection.
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(stop);
        idle.CancelAfter(TimeSpan.FromSeconds(45));
        var parser = SseParser.Create(body);
        await foreach (var item in parser.EnumerateAsync(idle.Token))
        {
            idle.CancelAfter(TimeSpan.FromSeconds(45));
            if (item.EventType == "shutdown")
                continue; // the agent stops; the stream ends, we reconnect
            await ApplyAsync(item.EventType, item.Data, stop);
            _lastEventId = parser.LastEventId; // only once applied
        }
        // The agent's `retry:` hint (sent first on every stream).
        var hint = parser.ReconnectionInterval;
        return hint > TimeSpan.Zero ? hint : TimeSpan.FromSeconds(2);
    }

    private async Task ApplyAsync(string type, string data, CancellationToken ct)
    {
        try
        {
            await ApplyOneAsync(type, data, ct);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            // Not what we expect: we cannot know what it invalidates.
            log.LogError("unreadable cachecast event {Type} ({Error}): clearing the cache", type, e.Message);
            ClearAll();
        }
    }

    private async Task ApplyOneAsync(string type, string data, CancellationToken ct)
    {
        using var doc = JsonDocument.Parse(data);
        var e = doc.RootElement;
        switch (type)
        {
            case "invalidate":
                foreach (var k in e.GetProperty("keys").EnumerateArray())
                {
                    var key = k.GetString()!;
                    memory.Remove(key);
                    if (distributed is not null)
                        await distributed.RemoveAsync(key, ct);
                }
                break;
            case "prefix":
                var prefix = e.GetProperty("prefix").GetString()!;
                if (memory is MemoryCache mc)
                {
                    foreach (var key in mc.Keys.OfType<string>().Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList())
                        mc.Remove(key);
                }
                else ClearAll();
                // IDistributedCache cannot remove by prefix: let the agent's
                // Redis applier do it.
                break;
            case "custom":
                break; // an application's own message (topic, base64 payload)
            case "reset":
                // Something may have been missed: drop everything.
                log.LogWarning("cachecast reset ({Reason}): clearing the cache",
                    e.TryGetProperty("reason", out var r) ? r.GetString() : "?");
                ClearAll();
                break;
            default: // "clear", and any kind this code does not know
                ClearAll();
                break;
        }
    }

    private void ClearAll()
    {
        if (memory is MemoryCache mc) mc.Clear();
        else log.LogError("cannot clear this IMemoryCache: use MemoryCache");
    }
}

/// <summary>Publishes invalidations through the local agent.</summary>
public sealed class CacheCastPublisher(IHttpClientFactory http)
{
    public Task InvalidateAsync(params string[] keys) => PostAsync(new { keys });
    public Task InvalidatePrefixAsync(string prefix) => PostAsync(new { prefix });
    public Task ClearAllAsync() => PostAsync(new { all = true });

    private async Task PostAsync(object body)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        using var resp = await http.CreateClient("cachecast")
            .PostAsJsonAsync("/v1/invalidate", body, cts.Token);
        if ((int)resp.StatusCode != 202)
        {
            var error = await resp.Content.ReadAsStringAsync(cts.Token);
            throw new HttpRequestException($"cachecast agent answered {(int)resp.StatusCode}: {error}");
        }
    }
}
