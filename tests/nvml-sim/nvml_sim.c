/*
 * A simulated NVIDIA Management Library: libnvidia-ml.so.1 for machines without a GPU.
 *
 * It implements the NVML calls deepdockd makes, with the C signatures of nvml.h, so that the
 * real pynvml code runs against it. The GPUs come from the JSON file named in
 * $NVML_SIM_CONFIG, read at the first nvmlInit (as in NVML, init and shutdown are counted and
 * thread-safe: a second nvmlInit in the process shares the first's GPUs, and only the last
 * nvmlShutdown lets them go):
 *
 *   {"driver_version": "550.54.15",
 *    "processes_file": "/tmp/processes.json",       (optional: processes a test changes, below)
 *    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
 *              "memory_total_mib": 81559, "power_limit_w": 700,
 *              "memory_reserved_mib": 480,           (the driver's own memory; default 0)
 *              "memory_v2": true,                    (false: no nvmlDeviceGetMemoryInfo_v2)
 *              "memory_used_mib": [1024, 2048], "utilization": [10, 35],
 *              "power_w": [70.5, 120], "temperature_c": [40, 44],
 *              "sm_clock_mhz": [1980, 1755], "mem_clock_mhz": 2619,
 *              "fan_pct": null,                      (null or absent: NOT_SUPPORTED)
 *              "processes": [{"pid": 1234, "used_memory_mib": 1130, "sm": 35,
 *                             "type": "compute"}],   (without "processes_file"; default [])
 *              "lost_if_exists": "/tmp/gpu1.lost",   (GPU_IS_LOST while that file exists)
 *              "delay_ms": 0,                        (each reading sleeps this long: a slow driver)
 *              "call_delay_us": 8,                   (each reading spins this long: its real cost)
 *              "gpm": {"sm_util": [40, 90]}}]}       (GPM metrics, below; absent: no GPM)
 *
 * Each reading is a list of values: the n-th call for that device and field returns value
 * n mod length, so readings move over time and a test can compute every value returned.
 * "sm_clock_mhz" and "mem_clock_mhz" are what nvmlDeviceGetClockInfo returns for NVML_CLOCK_SM
 * and NVML_CLOCK_MEM, each its own reading (any other clock: NOT_SUPPORTED).
 *
 * Memory: "memory_used_mib" is what the processes use, "memory_reserved_mib" what the driver
 * keeps for itself. nvmlDeviceGetMemoryInfo_v2 returns them apart (free = total - used -
 * reserved) and wants version nvmlMemory_v2 (else ARGUMENT_VERSION_MISMATCH);
 * nvmlDeviceGetMemoryInfo counts the reserved memory as used, as a real driver does. Both read
 * the one "memory_used_mib" reading: a call of either advances it. "memory_v2": false is an old
 * driver, whose nvmlDeviceGetMemoryInfo_v2 returns FUNCTION_NOT_FOUND.
 *
 * Processes: each is {"pid": 1234, "used_memory_mib": 1130 (null: NVML_VALUE_NOT_AVAILABLE, as
 * on Windows), "sm": 35 (its SM utilization in percent, default 0; its memory utilization is
 * half that), "type": "compute" or "graphics" (default "compute")}. They are a GPU's
 * "processes", or, with "processes_file", that file's {"<gpu index>": [process, ...], ...},
 * which a test may rewrite while NVML is initialised (atomically, by rename): every process
 * call stats it, and reads it again when its inode, mtime or size changed. A missing file means
 * no processes; an unparsable one prints a line on stderr and means none until it changes.
 * nvmlDeviceGetComputeRunningProcesses_v3 and nvmlDeviceGetGraphicsRunningProcesses_v3 list
 * those of their type; nvmlDeviceGetProcessUtilization gives one sample per process, stamped
 * now (CLOCK_REALTIME, microseconds), if that is after lastSeenTimeStamp, else NOT_FOUND.
 *
 * "call_delay_us" is what one reading costs a real driver, to time the daemon against (the
 * benchmarks use the costs measured on an H100): a number for every reading, or an object by
 * NVML function (CALL_NAMES below), e.g. {"nvmlDeviceGetMemoryInfo": 8,
 * "nvmlDeviceGetPowerUsage": 5}; a function the simulator does not implement is refused, so no
 * cost is silently dropped. Every call of the function costs it once: pynvml's two calls to
 * size and then fill a list cost it twice. It spins rather than sleeps: a driver call of a few
 * microseconds is an ioctl that keeps the CPU busy, so its time counts as the caller's CPU time
 * (and Linux's 50 us timer slack would stretch so short a sleep). 0 or absent: no cost, as
 * before.
 *
 * GPM (GPU Performance Monitoring, Hopper and newer): "gpm" is an object of readings named
 * after nvml.h's NVML_GPM_METRIC_<NAME> in lower case, in NVML's units (percent, MiB/s):
 * "graphics_util", "sm_util", "sm_occupancy", "any_tensor_util", "dram_bw_util",
 * "pcie_tx_per_sec", "pcie_rx_per_sec", "nvlink_total_tx_per_sec", "nvlink_total_rx_per_sec"
 * (any other key is refused). With "gpm", nvmlGpmQueryDeviceSupport says the device is
 * supported; without it, unsupported (isSupportedDevice 0, as on an A100), and
 * nvmlGpmSampleGet returns NOT_SUPPORTED. The n-th nvmlGpmSampleGet of a device holds reading n
 * (mod its length) of every metric; nvmlGpmMetricsGet of two samples of one device gives the
 * second sample's values (a real driver gives the rate between them), and per metric
 * NOT_SUPPORTED for a metric that "gpm" does not name. An empty "gpm" ({}) is a supported
 * device without these metrics.
 *
 * MIG: a GPU's "mig" makes it MIG-capable (without it nvmlDeviceGetMigMode returns
 * NOT_SUPPORTED, as on GPUs before the A100): {"mode": true (default; false: MIG-capable, MIG
 * mode off), "max_count": 7 (nvmlDeviceGetMaxMigDeviceCount; default the slices' count),
 * "slices": [{"uuid": "MIG-...", "profile": "1g.10gb", "memory_total_mib": 9856,
 * "memory_used_mib": [0, 512] (a reading, as above), "gpu_instance_id": 1,
 * "compute_instance_id": 0}, null, ...]}. Slice n is what nvmlDeviceGetMigDeviceHandleByIndex
 * gives for index n (null, or past the list: NOT_FOUND, an empty slot); its handle points into
 * an array of its own, so it is never taken for a whole GPU. On a MIG handle the simulator
 * answers nvmlDeviceGetUUID, nvmlDeviceGetName ("<parent's name> MIG <profile>"),
 * nvmlDeviceGetMemoryInfo, nvmlDeviceIsMigDeviceHandle, nvmlDeviceGetGpuInstanceId,
 * nvmlDeviceGetComputeInstanceId and nvmlDeviceGetDeviceHandleFromMigDeviceHandle; the parent's
 * GPU_IS_LOST is its own. A process on a slice carries that slice's "gpu_instance_id" and
 * "compute_instance_id" in its entry (absent: 0xFFFFFFFF, on no slice), and is listed on the
 * parent GPU, as NVML lists them.
 *
 * Without $NVML_SIM_CONFIG, nvmlInit fails with DRIVER_NOT_LOADED, as on a host without a
 * driver.
 */
#include <cjson/cJSON.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

enum { NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2 };

#define NVML_VALUE_NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL
#define NVML_NO_INSTANCE 0xFFFFFFFFu /* gpuInstanceId, computeInstanceId: not on a MIG slice */
#define nvmlMemory_v2 0x02000028u    /* NVML_STRUCT_VERSION(Memory, 2) */

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

enum {
    FIELD_MEMORY, FIELD_UTILIZATION, FIELD_POWER, FIELD_TEMPERATURE, FIELD_FAN,
    FIELD_SM_CLOCK, FIELD_MEM_CLOCK, FIELD_COUNT
};
static const char *FIELD_KEYS[FIELD_COUNT] = {
    "memory_used_mib", "utilization", "power_w", "temperature_c", "fan_pct",
    "sm_clock_mhz", "mem_clock_mhz",
};

/* The NVML functions that read the GPU: the keys of "call_delay_us". */
enum {
    CALL_MEMORY, CALL_MEMORY_V2, CALL_UTILIZATION, CALL_POWER, CALL_TEMPERATURE, CALL_FAN,
    CALL_CLOCK, CALL_COMPUTE_PROCESSES, CALL_GRAPHICS_PROCESSES, CALL_PROCESS_UTILIZATION,
    CALL_GPM_QUERY_SUPPORT, CALL_GPM_SAMPLE_GET, CALL_GPM_METRICS_GET,
    CALL_COUNT
};
static const char *CALL_NAMES[CALL_COUNT] = {
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature", "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetProcessUtilization",
    "nvmlGpmQueryDeviceSupport", "nvmlGpmSampleGet", "nvmlGpmMetricsGet",
};

/* The GPM metrics the simulator gives: nvml.h's id, the "gpm" key, and what
 * nvmlGpmMetricsGet names it (metricInfo). */
enum { GPM_COUNT = 9 };
static const struct {
    unsigned int id;
    const char *key, *short_name, *long_name, *unit;
} GPM_METRICS[GPM_COUNT] = {
    {1, "graphics_util", "gr_util", "graphics utilization", "%"},
    {2, "sm_util", "sm_util", "SM utilization", "%"},
    {3, "sm_occupancy", "sm_occupancy", "SM occupancy", "%"},
    {5, "any_tensor_util", "any_tensor_util", "any tensor utilization", "%"},
    {10, "dram_bw_util", "dram_bw_util", "DRAM bandwidth utilization", "%"},
    {20, "pcie_tx_per_sec", "pcie_tx_bw", "PCIe TX bandwidth", "MiB/sec"},
    {21, "pcie_rx_per_sec", "pcie_rx_bw", "PCIe RX bandwidth", "MiB/sec"},
    {60, "nvlink_total_rx_per_sec", "nvlink_bw_rx", "NvLink RX bandwidth", "MiB/sec"},
    {61, "nvlink_total_tx_per_sec", "nvlink_bw_tx", "NvLink TX bandwidth", "MiB/sec"},
};

typedef struct {
    double *values; /* NULL: the field is not supported */
    int length;
    unsigned long calls;
} series_t;

enum { PROCESS_COMPUTE, PROCESS_GRAPHICS };

typedef struct {
    unsigned int pid;
    unsigned long long used_memory; /* bytes, or NVML_VALUE_NOT_AVAILABLE */
    unsigned int sm;                /* percent */
    unsigned int gpu_instance_id, compute_instance_id; /* its MIG slice's, or NVML_NO_INSTANCE */
    int type;                       /* PROCESS_COMPUTE or PROCESS_GRAPHICS */
} sim_process_t;

typedef struct {
    sim_process_t *items;
    unsigned int count;
} process_list_t;

typedef struct sim_device {
    char name[96];
    char uuid[96];
    double memory_total_mib;
    double memory_reserved_mib;
    int memory_v2;
    double power_limit_w;
    char lost_if_exists[512];
    unsigned int delay_ms;
    unsigned int call_delay_us[CALL_COUNT];
    series_t fields[FIELD_COUNT];
    process_list_t processes;      /* its "processes" in the config */
    process_list_t file_processes; /* its list in "processes_file", as last read */
    int mig_mode;                  /* -1: no MIG (no "mig"); 0: MIG mode off; 1: on */
    unsigned int mig_max_count;    /* nvmlDeviceGetMaxMigDeviceCount */
    struct sim_mig *mig_slices;    /* mig_max_count slots; uuid "" for an empty one */
    int gpm_supported;             /* whether it has "gpm" */
    series_t gpm[GPM_COUNT];       /* by GPM_METRICS; values NULL: not in "gpm" */
    unsigned long gpm_samples;     /* nvmlGpmSampleGet calls so far */
} sim_device_t;

typedef struct sim_device *nvmlDevice_t;

static sim_device_t *devices;
static unsigned int device_count;
static char driver_version[80];
static int initialized;
static unsigned int init_count; /* nvmlInit calls not yet matched by an nvmlShutdown */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* "processes_file" ("": none), and what it was when last read, to read it again on a change. */
static char processes_file[PATH_MAX];
static struct {
    int read;
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    off_t size;
} processes_file_read;

static void free_processes(process_list_t *list) {
    free(list->items);
    list->items = NULL;
    list->count = 0;
}

static void free_mig(struct sim_device *device);
static int load_mig(struct sim_device *device, const cJSON *mig, const char *path,
                    unsigned int i);

static void free_devices(void) {
    for (unsigned int i = 0; i < device_count; i++) {
        for (int f = 0; f < FIELD_COUNT; f++) free(devices[i].fields[f].values);
        for (int g = 0; g < GPM_COUNT; g++) free(devices[i].gpm[g].values);
        free_processes(&devices[i].processes);
        free_processes(&devices[i].file_processes);
        free_mig(&devices[i]);
    }
    free(devices);
    devices = NULL;
    device_count = 0;
    processes_file[0] = '\0';
    processes_file_read.read = 0;
}

static char *read_file(const char *path) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    rewind(file);
    char *text = size < 0 ? NULL : malloc(size + 1);
    if (text && fread(text, 1, size, file) == (size_t)size) {
        text[size] = '\0';
    } else {
        free(text);
        text = NULL;
    }
    fclose(file);
    return text;
}

static void copy_string(char *target, size_t size, const cJSON *item, const char *fallback) {
    snprintf(target, size, "%s", cJSON_IsString(item) ? item->valuestring : fallback);
}

static int load_series(series_t *series, const cJSON *item) {
    series->calls = 0;
    series->values = NULL;
    series->length = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item)) {
        series->values = malloc(sizeof(double));
        series->values[0] = item->valuedouble;
        series->length = 1;
        return 0;
    }
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) == 0) return -1;
    series->length = cJSON_GetArraySize(item);
    series->values = calloc(series->length, sizeof(double));
    for (int i = 0; i < series->length; i++) {
        const cJSON *value = cJSON_GetArrayItem(item, i);
        if (!cJSON_IsNumber(value)) return -1;
        series->values[i] = value->valuedouble;
    }
    return 0;
}

/* "call_delay_us": absent, a number for every reading, or an object by NVML function. On an
 * error, *unknown_call names the function the simulator does not implement, if that was it. */
static int load_call_delays(unsigned int delays_us[CALL_COUNT], const cJSON *item,
                            const char **unknown_call) {
    for (int c = 0; c < CALL_COUNT; c++) delays_us[c] = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item) && item->valuedouble >= 0) {
        for (int c = 0; c < CALL_COUNT; c++) delays_us[c] = (unsigned int)item->valuedouble;
        return 0;
    }
    if (!cJSON_IsObject(item)) return -1;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, item) {
        int call = 0;
        while (call < CALL_COUNT && strcmp(entry->string, CALL_NAMES[call]) != 0) call++;
        if (call == CALL_COUNT) {
            *unknown_call = entry->string;
            return -1;
        }
        if (!cJSON_IsNumber(entry) || entry->valuedouble < 0) return -1;
        delays_us[call] = (unsigned int)entry->valuedouble;
    }
    return 0;
}

/* One process, {"pid": ..., "used_memory_mib": ..., "sm": ..., "type": ...}: NULL, or what is
 * wrong with it. */
static const char *load_process(sim_process_t *process, const cJSON *item) {
    if (!cJSON_IsObject(item)) return "expected {\"pid\": ..., \"used_memory_mib\": ...}";
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(item, "pid");
    if (!cJSON_IsNumber(pid) || pid->valuedouble < 0 || pid->valuedouble > UINT_MAX)
        return "\"pid\" must be a number";
    process->pid = (unsigned int)pid->valuedouble;
    const cJSON *memory = cJSON_GetObjectItemCaseSensitive(item, "used_memory_mib");
    if (cJSON_IsNull(memory))
        process->used_memory = NVML_VALUE_NOT_AVAILABLE;
    else if (cJSON_IsNumber(memory) && memory->valuedouble >= 0)
        process->used_memory = (unsigned long long)(memory->valuedouble * 1048576.0);
    else
        return "\"used_memory_mib\" must be a number of MiB, or null (not available)";
    const cJSON *sm = cJSON_GetObjectItemCaseSensitive(item, "sm");
    if (sm != NULL && !(cJSON_IsNumber(sm) && sm->valuedouble >= 0 && sm->valuedouble <= 100))
        return "\"sm\" must be a percentage, 0 to 100";
    process->sm = sm ? (unsigned int)sm->valuedouble : 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(item, "type");
    if (type == NULL || (cJSON_IsString(type) && strcmp(type->valuestring, "compute") == 0))
        process->type = PROCESS_COMPUTE;
    else if (cJSON_IsString(type) && strcmp(type->valuestring, "graphics") == 0)
        process->type = PROCESS_GRAPHICS;
    else
        return "\"type\" must be \"compute\" or \"graphics\"";
    const char *instance_keys[2] = {"gpu_instance_id", "compute_instance_id"};
    unsigned int *instances[2] = {&process->gpu_instance_id, &process->compute_instance_id};
    for (int k = 0; k < 2; k++) { /* its MIG slice's ids; absent: on no slice */
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, instance_keys[k]);
        if (id != NULL && !(cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < 1e6))
            return "\"gpu_instance_id\" and \"compute_instance_id\" must be numbers";
        *instances[k] = id ? (unsigned int)id->valuedouble : NVML_NO_INSTANCE;
    }
    return NULL;
}

/* A list of processes (null or absent: none) into *list, or what is wrong with it in problem. */
static int load_processes(process_list_t *list, const cJSON *item, char *problem, size_t size) {
    list->items = NULL;
    list->count = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsArray(item)) {
        snprintf(problem, size, "must be a list of processes");
        return -1;
    }
    int count = cJSON_GetArraySize(item);
    list->items = calloc(count ? count : 1, sizeof(sim_process_t));
    for (int i = 0; i < count; i++) {
        const char *wrong = load_process(&list->items[i], cJSON_GetArrayItem(item, i));
        if (wrong) {
            snprintf(problem, size, "[%d]: %s", i, wrong);
            free_processes(list);
            return -1;
        }
    }
    list->count = (unsigned int)count;
    return 0;
}

/* The lists of "processes_file", {"<gpu index>": [process, ...], ...}, into lists (one per
 * GPU), or what is wrong with it in problem. */
static int parse_processes_file(process_list_t *lists, const char *text, char *problem,
                                size_t size) {
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) {
        snprintf(problem, size, "expected {\"<gpu index>\": [processes], ...}");
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) {
        char *end;
        unsigned long index = strtoul(entry->string, &end, 10);
        if (entry->string[0] < '0' || entry->string[0] > '9' || *end != '\0' ||
            index >= device_count) {
            snprintf(problem, size, "\"%s\" is not the index of a GPU (there are %u)",
                     entry->string, device_count);
            cJSON_Delete(root);
            return -1;
        }
        char wrong[256];
        free_processes(&lists[index]); /* a key given twice: the last one */
        if (load_processes(&lists[index], entry, wrong, sizeof wrong) != 0) {
            snprintf(problem, size, "\"%s\"%s%s", entry->string, wrong[0] == '[' ? "" : " ",
                     wrong);
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}

static void forget_processes_file(void) {
    for (unsigned int i = 0; i < device_count; i++) free_processes(&devices[i].file_processes);
}

/* Read "processes_file" again if it changed (another file, mtime or size) since the last read. */
static void refresh_processes_file(void) {
    struct stat status;
    if (stat(processes_file, &status) != 0) { /* no file: no processes */
        forget_processes_file();
        processes_file_read.read = 0;
        return;
    }
    if (processes_file_read.read && processes_file_read.dev == status.st_dev &&
        processes_file_read.ino == status.st_ino && processes_file_read.size == status.st_size &&
        processes_file_read.mtime.tv_sec == status.st_mtim.tv_sec &&
        processes_file_read.mtime.tv_nsec == status.st_mtim.tv_nsec)
        return;
    forget_processes_file();
    char *text = read_file(processes_file);
    if (text == NULL) { /* gone since the stat: as if missing, and read it when it is back */
        processes_file_read.read = 0;
        return;
    }
    processes_file_read.read = 1;
    processes_file_read.dev = status.st_dev;
    processes_file_read.ino = status.st_ino;
    processes_file_read.mtime = status.st_mtim;
    processes_file_read.size = status.st_size;
    process_list_t *lists = calloc(device_count ? device_count : 1, sizeof(process_list_t));
    char problem[384];
    if (parse_processes_file(lists, text, problem, sizeof problem) == 0) {
        for (unsigned int i = 0; i < device_count; i++) devices[i].file_processes = lists[i];
    } else {
        fprintf(stderr, "nvml-sim: processes_file %s: %s; no processes until it changes\n",
                processes_file, problem);
        for (unsigned int i = 0; i < device_count; i++) free_processes(&lists[i]);
    }
    free(lists);
    free(text);
}

/* The processes on a device now. */
static const process_list_t *processes_of(nvmlDevice_t device) {
    if (processes_file[0] == '\0') return &device->processes;
    refresh_processes_file();
    return &device->file_processes;
}

/* "gpm": absent or null (no GPM), or an object of readings by GPM_METRICS key: 0, or -1 once
 * the problem is on stderr. */
static int load_gpm(sim_device_t *device, const cJSON *gpm, const char *path, unsigned int i) {
    device->gpm_supported = gpm != NULL && !cJSON_IsNull(gpm);
    device->gpm_samples = 0;
    for (int g = 0; g < GPM_COUNT; g++) load_series(&device->gpm[g], NULL);
    if (!device->gpm_supported) return 0;
    if (!cJSON_IsObject(gpm)) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].gpm must be an object of GPM readings\n", path,
                i);
        return -1;
    }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, gpm) {
        int g = 0;
        while (g < GPM_COUNT && strcmp(entry->string, GPM_METRICS[g].key) != 0) g++;
        if (g == GPM_COUNT) {
            fprintf(stderr, "nvml-sim: %s: gpus[%u].gpm.%s: the simulator has no such GPM"
                            " metric\n", path, i, entry->string);
            return -1;
        }
        free(device->gpm[g].values); /* a key given twice: the last one */
        if (load_series(&device->gpm[g], entry) != 0) { /* null: that metric NOT_SUPPORTED */
            fprintf(stderr, "nvml-sim: %s: gpus[%u].gpm.%s must be null, a number or a list of"
                            " numbers\n", path, i, entry->string);
            return -1;
        }
    }
    return 0;
}

/* The keys of a GPU that are not readings: 0, or -1 once the problem is on stderr. */
static int load_gpu_settings(sim_device_t *device, const cJSON *gpu, const char *path,
                             unsigned int i) {
    const cJSON *reserved = cJSON_GetObjectItemCaseSensitive(gpu, "memory_reserved_mib");
    if (reserved != NULL && !(cJSON_IsNumber(reserved) && reserved->valuedouble >= 0)) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].memory_reserved_mib must be a number of MiB\n",
                path, i);
        return -1;
    }
    device->memory_reserved_mib = reserved ? reserved->valuedouble : 0;
    const cJSON *memory_v2 = cJSON_GetObjectItemCaseSensitive(gpu, "memory_v2");
    if (memory_v2 != NULL && !cJSON_IsBool(memory_v2)) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].memory_v2 must be true or false\n", path, i);
        return -1;
    }
    device->memory_v2 = memory_v2 == NULL || cJSON_IsTrue(memory_v2);
    char problem[256];
    if (load_processes(&device->processes, cJSON_GetObjectItemCaseSensitive(gpu, "processes"),
                       problem, sizeof problem) != 0) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].processes%s%s\n", path, i,
                problem[0] == '[' ? "" : " ", problem);
        return -1;
    }
    if (load_mig(device, cJSON_GetObjectItemCaseSensitive(gpu, "mig"), path, i) != 0) return -1;
    return load_gpm(device, cJSON_GetObjectItemCaseSensitive(gpu, "gpm"), path, i);
}

static nvmlReturn_t load_config(void) {
    const char *path = getenv("NVML_SIM_CONFIG");
    if (path == NULL || *path == '\0') return NVML_ERROR_DRIVER_NOT_LOADED;
    char *text = read_file(path);
    if (text == NULL) {
        fprintf(stderr, "nvml-sim: cannot read NVML_SIM_CONFIG=%s\n", path);
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *gpus = cJSON_GetObjectItemCaseSensitive(root, "gpus");
    if (!cJSON_IsArray(gpus)) {
        fprintf(stderr, "nvml-sim: %s: expected {\"gpus\": [...]}\n", path);
        cJSON_Delete(root);
        return NVML_ERROR_UNKNOWN;
    }
    copy_string(driver_version, sizeof driver_version,
                cJSON_GetObjectItemCaseSensitive(root, "driver_version"), "550.54.15");
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(root, "processes_file");
    if ((file != NULL && !cJSON_IsNull(file) && !cJSON_IsString(file)) ||
        (cJSON_IsString(file) && strlen(file->valuestring) >= sizeof processes_file)) {
        fprintf(stderr, "nvml-sim: %s: processes_file must be the path of a JSON file\n", path);
        cJSON_Delete(root);
        return NVML_ERROR_UNKNOWN;
    }
    copy_string(processes_file, sizeof processes_file, file, "");
    processes_file_read.read = 0;
    device_count = cJSON_GetArraySize(gpus);
    devices = calloc(device_count ? device_count : 1, sizeof(sim_device_t));
    for (unsigned int i = 0; i < device_count; i++) {
        const cJSON *gpu = cJSON_GetArrayItem(gpus, i);
        sim_device_t *device = &devices[i];
        char fallback_uuid[64];
        snprintf(fallback_uuid, sizeof fallback_uuid, "GPU-00000000-0000-0000-0000-%012u", i);
        copy_string(device->name, sizeof device->name,
                    cJSON_GetObjectItemCaseSensitive(gpu, "name"), "NVIDIA Simulated GPU");
        copy_string(device->uuid, sizeof device->uuid,
                    cJSON_GetObjectItemCaseSensitive(gpu, "uuid"), fallback_uuid);
        copy_string(device->lost_if_exists, sizeof device->lost_if_exists,
                    cJSON_GetObjectItemCaseSensitive(gpu, "lost_if_exists"), "");
        const cJSON *total = cJSON_GetObjectItemCaseSensitive(gpu, "memory_total_mib");
        device->memory_total_mib = cJSON_IsNumber(total) ? total->valuedouble : 16384;
        const cJSON *delay = cJSON_GetObjectItemCaseSensitive(gpu, "delay_ms");
        device->delay_ms = cJSON_IsNumber(delay) ? (unsigned int)delay->valuedouble : 0;
        const char *unknown_call = NULL;
        if (load_call_delays(device->call_delay_us,
                             cJSON_GetObjectItemCaseSensitive(gpu, "call_delay_us"),
                             &unknown_call) != 0) {
            if (unknown_call)
                fprintf(stderr, "nvml-sim: %s: gpus[%u].call_delay_us: the simulator does not"
                                " implement %s\n", path, i, unknown_call);
            else
                fprintf(stderr, "nvml-sim: %s: gpus[%u].call_delay_us must be microseconds, or"
                                " an object of them by NVML function\n", path, i);
            cJSON_Delete(root);
            free_devices();
            return NVML_ERROR_UNKNOWN;
        }
        const cJSON *limit = cJSON_GetObjectItemCaseSensitive(gpu, "power_limit_w");
        device->power_limit_w = cJSON_IsNumber(limit) ? limit->valuedouble : 300;
        if (load_gpu_settings(device, gpu, path, i) != 0) {
            cJSON_Delete(root);
            free_devices();
            return NVML_ERROR_UNKNOWN;
        }
        for (int f = 0; f < FIELD_COUNT; f++) {
            if (load_series(&device->fields[f],
                            cJSON_GetObjectItemCaseSensitive(gpu, FIELD_KEYS[f])) != 0) {
                fprintf(stderr, "nvml-sim: %s: gpus[%u].%s must be null, a number or a list of"
                                " numbers\n", path, i, FIELD_KEYS[f]);
                cJSON_Delete(root);
                free_devices();
                return NVML_ERROR_UNKNOWN;
            }
        }
    }
    cJSON_Delete(root);
    return NVML_SUCCESS;
}

/* Keep the CPU busy for this long, as a driver call does. */
static void spin_us(unsigned int microseconds) {
    struct timespec now, until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (long)(microseconds % 1000000) * 1000;
    until.tv_sec += microseconds / 1000000 + until.tv_nsec / 1000000000;
    until.tv_nsec %= 1000000000;
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec < until.tv_sec ||
             (now.tv_sec == until.tv_sec && now.tv_nsec < until.tv_nsec));
}

static nvmlReturn_t check_handle(nvmlDevice_t device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || device < devices || device >= devices + device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

static int is_lost(nvmlDevice_t device) {
    return device->lost_if_exists[0] && access(device->lost_if_exists, F_OK) == 0;
}

static nvmlReturn_t check_device(nvmlDevice_t device) {
    nvmlReturn_t result = check_handle(device);
    if (result != NVML_SUCCESS) return result;
    return is_lost(device) ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

/* The start of every reading: the handle checked, the device's delay and the call's cost
 * spent, then a lost GPU's error. */
static nvmlReturn_t begin_reading(nvmlDevice_t device, int call) {
    nvmlReturn_t result = check_handle(device);
    if (result != NVML_SUCCESS) return result;
    if (device->delay_ms) usleep(device->delay_ms * 1000);
    if (device->call_delay_us[call]) spin_us(device->call_delay_us[call]);
    return is_lost(device) ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

/* The next value of a reading by an NVML call, or an error for a lost GPU or an unsupported
 * field. */
static nvmlReturn_t next_value(nvmlDevice_t device, int field, int call, double *value) {
    nvmlReturn_t result = begin_reading(device, call);
    if (result != NVML_SUCCESS) return result;
    series_t *series = &device->fields[field];
    if (series->values == NULL) return NVML_ERROR_NOT_SUPPORTED;
    *value = series->values[series->calls++ % series->length];
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(char *target, unsigned int length, const char *text) {
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(target, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t result = NVML_SUCCESS;
    pthread_mutex_lock(&init_lock);
    if (init_count == 0) {
        free_devices();
        result = load_config();
        initialized = result == NVML_SUCCESS;
    }
    if (result == NVML_SUCCESS) init_count++;
    pthread_mutex_unlock(&init_lock);
    return result;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&init_lock);
    nvmlReturn_t result = NVML_SUCCESS;
    if (init_count == 0) {
        result = NVML_ERROR_UNINITIALIZED;
    } else if (--init_count == 0) {
        initialized = 0;
        free_devices();
    }
    pthread_mutex_unlock(&init_lock);
    return result;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy_out(version, length, driver_version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *count = device_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

static struct sim_mig *mig_of(nvmlDevice_t device);
static nvmlReturn_t mig_name(struct sim_mig *mig, char *name, unsigned int length);
static nvmlReturn_t mig_uuid(struct sim_mig *mig, char *uuid, unsigned int length);
static nvmlReturn_t mig_memory(struct sim_mig *mig, nvmlMemory_t *memory);

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (mig_of(device)) return mig_name(mig_of(device), name, length);
    nvmlReturn_t result = check_device(device);
    return result != NVML_SUCCESS ? result : copy_out(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    if (mig_of(device)) return mig_uuid(mig_of(device), uuid, length);
    nvmlReturn_t result = check_device(device);
    return result != NVML_SUCCESS ? result : copy_out(uuid, length, device->uuid);
}

/* The next memory reading in bytes: the total, the driver's reserved and the processes' used. */
static nvmlReturn_t read_memory(nvmlDevice_t device, int call, unsigned long long *total,
                                unsigned long long *reserved, unsigned long long *used) {
    double used_mib;
    nvmlReturn_t result = next_value(device, FIELD_MEMORY, call, &used_mib);
    if (result != NVML_SUCCESS) return result;
    *total = (unsigned long long)(device->memory_total_mib * 1048576.0);
    *reserved = (unsigned long long)(device->memory_reserved_mib * 1048576.0);
    *used = (unsigned long long)(used_mib * 1048576.0);
    return NVML_SUCCESS;
}

/* As a real driver does, the memory the driver reserves counts as used. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (mig_of(device)) return mig_memory(mig_of(device), memory);
    unsigned long long total, reserved, used;
    nvmlReturn_t result = read_memory(device, CALL_MEMORY, &total, &reserved, &used);
    if (result != NVML_SUCCESS) return result;
    memory->total = total;
    memory->used = used + reserved;
    memory->free = total > memory->used ? total - memory->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    nvmlReturn_t result = check_handle(device);
    if (result != NVML_SUCCESS) return result;
    if (!device->memory_v2) return NVML_ERROR_FUNCTION_NOT_FOUND; /* an old driver */
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, reserved, used;
    result = read_memory(device, CALL_MEMORY_V2, &total, &reserved, &used);
    if (result != NVML_SUCCESS) return result;
    memory->total = total;
    memory->reserved = reserved;
    memory->used = used;
    memory->free = total > used + reserved ? total - used - reserved : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    double gpu;
    nvmlReturn_t result = next_value(device, FIELD_UTILIZATION, CALL_UTILIZATION, &gpu);
    if (result != NVML_SUCCESS) return result;
    rates->gpu = (unsigned int)gpu;
    rates->memory = (unsigned int)gpu / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power_mw) {
    double watts;
    nvmlReturn_t result = next_value(device, FIELD_POWER, CALL_POWER, &watts);
    if (result == NVML_SUCCESS) *power_mw = (unsigned int)(watts * 1000.0 + 0.5);
    return result;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit_mw) {
    nvmlReturn_t result = check_device(device);
    if (result == NVML_SUCCESS) *limit_mw = (unsigned int)(device->power_limit_w * 1000.0 + 0.5);
    return result;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *celsius) {
    double value;
    if (sensor != 0) return NVML_ERROR_NOT_SUPPORTED; /* NVML_TEMPERATURE_GPU only */
    nvmlReturn_t result = next_value(device, FIELD_TEMPERATURE, CALL_TEMPERATURE, &value);
    if (result == NVML_SUCCESS) *celsius = (unsigned int)value;
    return result;
}

nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *percent) {
    double value;
    nvmlReturn_t result = next_value(device, FIELD_FAN, CALL_FAN, &value);
    if (result == NVML_SUCCESS) *percent = (unsigned int)value;
    return result;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock_mhz) {
    double value;
    int field = type == NVML_CLOCK_SM ? FIELD_SM_CLOCK
              : type == NVML_CLOCK_MEM ? FIELD_MEM_CLOCK : -1;
    if (field < 0) return NVML_ERROR_NOT_SUPPORTED; /* NVML_CLOCK_SM and NVML_CLOCK_MEM only */
    nvmlReturn_t result = next_value(device, field, CALL_CLOCK, &value);
    if (result == NVML_SUCCESS) *clock_mhz = (unsigned int)value;
    return result;
}

/* The running processes of one type, by nvml.h's protocol: a count too small for them gets
 * the count needed and INSUFFICIENT_SIZE (pynvml asks with 0, then with room). */
static nvmlReturn_t running_processes(nvmlDevice_t device, int call, int type,
                                      unsigned int *count, nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = begin_reading(device, call);
    if (result != NVML_SUCCESS) return result;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const process_list_t *list = processes_of(device);
    unsigned int found = 0;
    for (unsigned int i = 0; i < list->count; i++) found += list->items[i].type == type;
    if (*count < found) {
        *count = found;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (found > 0 && infos == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (unsigned int i = 0; i < list->count; i++) {
        const sim_process_t *process = &list->items[i];
        if (process->type != type) continue;
        infos[n].pid = process->pid;
        infos[n].usedGpuMemory = process->used_memory;
        infos[n].gpuInstanceId = process->gpu_instance_id;
        infos[n].computeInstanceId = process->compute_instance_id;
        n++;
    }
    *count = found;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                     unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos) {
    return running_processes(device, CALL_COMPUTE_PROCESSES, PROCESS_COMPUTE, infoCount, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device,
                                                      unsigned int *infoCount,
                                                      nvmlProcessInfo_t *infos) {
    return running_processes(device, CALL_GRAPHICS_PROCESSES, PROCESS_GRAPHICS, infoCount,
                             infos);
}

static unsigned long long realtime_us(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000;
}

/* One sample per process, of both types, stamped now: none (NOT_FOUND) unless now is after
 * lastSeenTimeStamp. No array, or one too small: the count needed and INSUFFICIENT_SIZE. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp) {
    nvmlReturn_t result = begin_reading(device, CALL_PROCESS_UTILIZATION);
    if (result != NVML_SUCCESS) return result;
    if (processSamplesCount == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const process_list_t *list = processes_of(device);
    unsigned long long now = realtime_us();
    unsigned int found = now > lastSeenTimeStamp ? list->count : 0;
    if (found == 0) return NVML_ERROR_NOT_FOUND;
    if (utilization == NULL || *processSamplesCount < found) {
        *processSamplesCount = found;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < found; i++) {
        utilization[i].pid = list->items[i].pid;
        utilization[i].timeStamp = now;
        utilization[i].smUtil = list->items[i].sm;
        utilization[i].memUtil = list->items[i].sm / 2;
        utilization[i].encUtil = 0;
        utilization[i].decUtil = 0;
    }
    *processSamplesCount = found;
    return NVML_SUCCESS;
}

/* --- GPM: GPU Performance Monitoring (nvml.h's layouts) --- */

#define NVML_GPM_METRICS_GET_VERSION 1
#define NVML_GPM_SUPPORT_VERSION 1
#define NVML_GPM_METRIC_MAX 477 /* nvml.h's, as nvidia-ml-py 13 sizes the array */
#define SIM_GPM_SAMPLE_MAGIC 0x73476d50u

typedef struct sim_gpm_sample {
    unsigned int magic; /* SIM_GPM_SAMPLE_MAGIC while allocated */
    sim_device_t *device; /* NULL until nvmlGpmSampleGet fills it */
    unsigned long reading; /* which reading of the device's "gpm" it holds */
} sim_gpm_sample_t;

typedef struct sim_gpm_sample *nvmlGpmSample_t;

typedef struct {
    unsigned int version;
    unsigned int isSupportedDevice;
} nvmlGpmSupport_t;

typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct {
        char *shortName;
        char *longName;
        char *unit;
    } metricInfo;
} nvmlGpmMetric_t;

typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[NVML_GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *support) {
    nvmlReturn_t result = begin_reading(device, CALL_GPM_QUERY_SUPPORT);
    if (result != NVML_SUCCESS) return result;
    if (support == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (support->version != NVML_GPM_SUPPORT_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    support->isSupportedDevice = device->gpm_supported ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (sample == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *sample = calloc(1, sizeof(sim_gpm_sample_t));
    if (*sample == NULL) return NVML_ERROR_UNKNOWN;
    (*sample)->magic = SIM_GPM_SAMPLE_MAGIC;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
    if (sample == NULL || sample->magic != SIM_GPM_SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    sample->magic = 0;
    free(sample);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t sample) {
    nvmlReturn_t result = begin_reading(device, CALL_GPM_SAMPLE_GET);
    if (result != NVML_SUCCESS) return result;
    if (sample == NULL || sample->magic != SIM_GPM_SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->gpm_supported) return NVML_ERROR_NOT_SUPPORTED;
    sample->device = device;
    sample->reading = device->gpm_samples++;
    return NVML_SUCCESS;
}

/* Each metric asked for: the value of the second sample's reading. Two samples of one device,
 * both taken (as NVML wants), else INVALID_ARGUMENT. */
nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *metricsGet) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (metricsGet == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (metricsGet->version != NVML_GPM_METRICS_GET_VERSION)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const sim_gpm_sample_t *first = metricsGet->sample1, *second = metricsGet->sample2;
    if (first == NULL || second == NULL || first->magic != SIM_GPM_SAMPLE_MAGIC ||
        second->magic != SIM_GPM_SAMPLE_MAGIC || first->device == NULL ||
        first->device != second->device || metricsGet->numMetrics > NVML_GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t result = check_handle(second->device);
    if (result != NVML_SUCCESS) return result;
    if (second->device->call_delay_us[CALL_GPM_METRICS_GET])
        spin_us(second->device->call_delay_us[CALL_GPM_METRICS_GET]);
    for (unsigned int m = 0; m < metricsGet->numMetrics; m++) {
        nvmlGpmMetric_t *metric = &metricsGet->metrics[m];
        int g = 0;
        while (g < GPM_COUNT && GPM_METRICS[g].id != metric->metricId) g++;
        const series_t *series = g < GPM_COUNT ? &second->device->gpm[g] : NULL;
        metric->value = 0;
        if (series == NULL || series->values == NULL) {
            metric->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            continue;
        }
        metric->nvmlReturn = NVML_SUCCESS;
        metric->value = series->values[second->reading % series->length];
        metric->metricInfo.shortName = (char *)GPM_METRICS[g].short_name;
        metric->metricInfo.longName = (char *)GPM_METRICS[g].long_name;
        metric->metricInfo.unit = (char *)GPM_METRICS[g].unit;
    }
    return NVML_SUCCESS;
}

/* --- MIG: a GPU in MIG mode and its MIG devices ("mig" in the config) --- */

#define NVML_DEVICE_MIG_DISABLE 0
#define NVML_DEVICE_MIG_ENABLE 1
#define SIM_MIG_MAGIC 0x4d494721u

typedef struct sim_mig {
    unsigned int magic; /* SIM_MIG_MAGIC: what tells a MIG handle from a GPU's */
    sim_device_t *parent;
    char uuid[96];      /* "": an empty slot */
    char profile[32];
    double memory_total_mib;
    series_t memory_used;
    unsigned int gpu_instance_id, compute_instance_id;
} sim_mig_t;

/* The slice a handle points to, or NULL for any other handle (a GPU's, or garbage that
 * check_handle refuses). A MIG handle points into its parent's mig_slices. */
static struct sim_mig *mig_of(nvmlDevice_t device) {
    if (!initialized || device == NULL) return NULL;
    for (unsigned int i = 0; i < device_count; i++) {
        sim_mig_t *slots = devices[i].mig_slices;
        if (slots && (void *)device >= (void *)slots &&
            (void *)device < (void *)(slots + devices[i].mig_max_count)) {
            sim_mig_t *mig = (sim_mig_t *)(void *)device;
            return mig->magic == SIM_MIG_MAGIC && mig->uuid[0] ? mig : NULL;
        }
    }
    return NULL;
}

static void free_mig(struct sim_device *device) {
    for (unsigned int s = 0; device->mig_slices && s < device->mig_max_count; s++)
        free(device->mig_slices[s].memory_used.values);
    free(device->mig_slices);
    device->mig_slices = NULL;
    device->mig_max_count = 0;
}

static int load_slice(sim_mig_t *mig, const cJSON *item) {
    const cJSON *uuid = cJSON_GetObjectItemCaseSensitive(item, "uuid");
    const cJSON *profile = cJSON_GetObjectItemCaseSensitive(item, "profile");
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(item, "memory_total_mib");
    const cJSON *gi = cJSON_GetObjectItemCaseSensitive(item, "gpu_instance_id");
    const cJSON *ci = cJSON_GetObjectItemCaseSensitive(item, "compute_instance_id");
    if (!cJSON_IsString(uuid) || uuid->valuestring[0] == '\0' || !cJSON_IsString(profile) ||
        !cJSON_IsNumber(total) || !cJSON_IsNumber(gi) || !cJSON_IsNumber(ci))
        return -1;
    mig->magic = SIM_MIG_MAGIC;
    copy_string(mig->uuid, sizeof mig->uuid, uuid, "");
    copy_string(mig->profile, sizeof mig->profile, profile, "");
    mig->memory_total_mib = total->valuedouble;
    mig->gpu_instance_id = (unsigned int)gi->valuedouble;
    mig->compute_instance_id = (unsigned int)ci->valuedouble;
    const cJSON *used = cJSON_GetObjectItemCaseSensitive(item, "memory_used_mib");
    cJSON *zero = used ? NULL : cJSON_CreateNumber(0);
    int result = load_series(&mig->memory_used, used ? used : zero);
    cJSON_Delete(zero);
    return result == 0 && mig->memory_used.values ? 0 : -1;
}

/* "mig": absent or null (not MIG-capable), or {"mode", "max_count", "slices"}: 0, or -1 once
 * the problem is on stderr. */
static int load_mig(struct sim_device *device, const cJSON *mig, const char *path,
                    unsigned int i) {
    device->mig_mode = -1;
    device->mig_slices = NULL;
    device->mig_max_count = 0;
    if (mig == NULL || cJSON_IsNull(mig)) return 0;
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(mig, "mode");
    const cJSON *slices = cJSON_GetObjectItemCaseSensitive(mig, "slices");
    const cJSON *max_count = cJSON_GetObjectItemCaseSensitive(mig, "max_count");
    if (!cJSON_IsObject(mig) || (mode && !cJSON_IsBool(mode)) ||
        (slices && !cJSON_IsArray(slices)) || (max_count && !cJSON_IsNumber(max_count))) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].mig must be {\"mode\": true, \"max_count\": 7,"
                        " \"slices\": [...]}\n", path, i);
        return -1;
    }
    device->mig_mode = mode == NULL || cJSON_IsTrue(mode);
    unsigned int listed = slices ? (unsigned int)cJSON_GetArraySize(slices) : 0;
    unsigned int count = max_count ? (unsigned int)max_count->valuedouble : listed;
    if (count < listed) count = listed;
    device->mig_max_count = count;
    device->mig_slices = calloc(count ? count : 1, sizeof(sim_mig_t));
    for (unsigned int s = 0; s < listed; s++) {
        const cJSON *item = cJSON_GetArrayItem(slices, (int)s);
        device->mig_slices[s].parent = device;
        if (cJSON_IsNull(item)) continue; /* an empty slot */
        if (load_slice(&device->mig_slices[s], item) != 0) {
            fprintf(stderr, "nvml-sim: %s: gpus[%u].mig.slices[%u] must be {\"uuid\","
                            " \"profile\", \"memory_total_mib\", \"gpu_instance_id\","
                            " \"compute_instance_id\"} (and a \"memory_used_mib\" reading)\n",
                    path, i, s);
            return -1;
        }
    }
    return 0;
}

static nvmlReturn_t mig_check(sim_mig_t *mig) {
    return is_lost(mig->parent) ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

static nvmlReturn_t mig_name(struct sim_mig *mig, char *name, unsigned int length) {
    nvmlReturn_t result = mig_check(mig);
    if (result != NVML_SUCCESS) return result;
    char text[160];
    snprintf(text, sizeof text, "%s MIG %s", mig->parent->name, mig->profile);
    return copy_out(name, length, text);
}

static nvmlReturn_t mig_uuid(struct sim_mig *mig, char *uuid, unsigned int length) {
    nvmlReturn_t result = mig_check(mig);
    return result != NVML_SUCCESS ? result : copy_out(uuid, length, mig->uuid);
}

static nvmlReturn_t mig_memory(struct sim_mig *mig, nvmlMemory_t *memory) {
    nvmlReturn_t result = mig_check(mig);
    if (result != NVML_SUCCESS) return result;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    series_t *series = &mig->memory_used;
    double used_mib = series->values[series->calls++ % series->length];
    memory->total = (unsigned long long)(mig->memory_total_mib * 1048576.0);
    memory->used = (unsigned long long)(used_mib * 1048576.0);
    memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                  unsigned int *pendingMode) {
    if (mig_of(device)) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t result = check_device(device);
    if (result != NVML_SUCCESS) return result;
    if (device->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    if (currentMode == NULL || pendingMode == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *currentMode = *pendingMode = device->mig_mode ? NVML_DEVICE_MIG_ENABLE
                                                   : NVML_DEVICE_MIG_DISABLE;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    nvmlReturn_t result = check_device(device);
    if (result != NVML_SUCCESS) return result;
    if (device->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = device->mig_max_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *migDevice) {
    nvmlReturn_t result = check_device(device);
    if (result != NVML_SUCCESS) return result;
    if (device->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    if (migDevice == NULL || index >= device->mig_max_count) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->mig_mode == 0 || device->mig_slices[index].uuid[0] == '\0')
        return NVML_ERROR_NOT_FOUND;
    *migDevice = (nvmlDevice_t)(void *)&device->mig_slices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (isMigDevice == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (mig_of(device)) {
        *isMigDevice = 1;
        return NVML_SUCCESS;
    }
    nvmlReturn_t result = check_handle(device);
    if (result == NVML_SUCCESS) *isMigDevice = 0;
    return result;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
                                                          nvmlDevice_t *device) {
    sim_mig_t *mig = mig_of(migDevice);
    if (mig == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device = mig->parent;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    sim_mig_t *mig = mig_of(device);
    if (mig == NULL) return check_handle(device) == NVML_SUCCESS ? NVML_ERROR_NOT_SUPPORTED
                                                                 : NVML_ERROR_INVALID_ARGUMENT;
    if (id == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *id = mig->gpu_instance_id;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    sim_mig_t *mig = mig_of(device);
    if (mig == NULL) return check_handle(device) == NVML_SUCCESS ? NVML_ERROR_NOT_SUPPORTED
                                                                 : NVML_ERROR_INVALID_ARGUMENT;
    if (id == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *id = mig->compute_instance_id;
    return NVML_SUCCESS;
}
